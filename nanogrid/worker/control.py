"""Remote control commands NanoGrid adds to its workers (`celery -A nanogrid control|inspect ...`)."""

from __future__ import annotations

from celery.worker.control import control_command, inspect_command


@control_command(args=[("job_id", str)], signature="<job_id>")
def cancel_job(state, job_id: str) -> dict:
    """Kill the sandbox running job_id, if it runs on this worker.

    A fast path only: the job record is already FAILED/cancelled when this is sent, so a worker
    that never hears it still stops the run when its next lease renewal is refused.
    """
    from nanogrid import services

    killed = services.current().sandbox.kill(job_id)
    return {"ok": "killed" if killed else "not running here"}


@inspect_command()
def task_events(state) -> dict:
    """Whether this worker sends task events now (`celery -A nanogrid inspect task_events`).

    They are off by default (NANOGRID_TASK_EVENTS); Flower turns them on every few seconds in the
    workers it watches, and `celery -A nanogrid control enable_events` does at once. A task that
    starts before they are on never reaches a monitor: its events were not sent. Worker heartbeats
    are sent either way, so a worker Flower lists as online does not prove task events are on.
    """
    dispatcher = state.consumer.event_dispatcher
    # Celery's dispatcher sends every group when `groups` is empty, only those listed otherwise.
    on = dispatcher is not None and dispatcher.enabled and (not dispatcher.groups or "task" in dispatcher.groups)
    return {"task_events": bool(on)}
