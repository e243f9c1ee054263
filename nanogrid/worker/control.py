"""Remote control commands NanoGrid adds to its workers (`celery -A nanogrid control ...`)."""

from __future__ import annotations

from celery.worker.control import control_command


@control_command(args=[("job_id", str)], signature="<job_id>")
def cancel_job(state, job_id: str) -> dict:
    """Kill the sandbox running job_id, if it runs on this worker.

    A fast path only: the job record is already FAILED/cancelled when this is sent, so a worker
    that never hears it still stops the run when its next lease renewal is refused.
    """
    from nanogrid.worker.tasks import services

    killed = services().sandbox.kill(job_id)
    return {"ok": "killed" if killed else "not running here"}
