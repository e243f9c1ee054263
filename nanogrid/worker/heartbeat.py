"""Worker heartbeats, the sandbox engine watchdog and the shutdown grace, in the worker's main process.

Every HEARTBEAT_S (and at once when a run message arrives) the worker writes its heartbeat
(nanogrid.jobs.index: beat): when it was seen, the run messages it holds and has not finished
(Celery's reserved requests, running ones included), whether its sandbox engine answers, and its
pid. A message a worker took and then died with is otherwise lost for a long while: it was
acknowledged when its run started, or it sits invisible in SQS for the visibility timeout. So the
reaper of any worker dispatches again, within WORKER_TTL_S plus a reaper interval, the runs held
by a worker that stopped beating and that nobody claimed. /health and `nanogrid status` show the
heartbeats.

The watchdog: while the sandbox engine does not answer, the worker stops consuming the task queue
(the runs wait there, for this worker or another) and resumes when the engine answers again.

The shutdown grace (NANOGRID_SHUTDOWN_GRACE_S): a warm shutdown waits that long for the runs in
progress, then has the pool processes stop them (SIGUSR2; each run ends FAILED/worker_lost with
the output it had printed). Unset, runs finish first, as Celery's warm shutdown does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import bootsteps, signals
from celery.worker import state as worker_state

from nanogrid.errors import Unavailable
from nanogrid.sandbox import EngineUnavailable
from nanogrid.services import current as current_services
from nanogrid.services import worker_id
from nanogrid.task_names import RUN_TASK
from nanogrid.worker import serves_runs

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
INTERRUPT_SIGNAL = signal.SIGUSR2  # billiard uses SIGUSR1 in pool processes (soft time limits)


def held_jobs() -> list[str]:
    """The job ids of the run messages this worker has received and not finished."""
    held = []
    for request in list(worker_state.reserved_requests):
        if request.name == RUN_TASK and request.args:
            held.append(str(request.args[0]))
    return held


class HeartbeatStep(bootsteps.StartStopStep):
    """The heartbeat and watchdog thread beside the pool, and the shutdown grace before it stops."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.enabled = serves_runs(worker)
        if self.enabled:  # its pool processes run functions: each readies its stem cells when it starts
            signals.worker_process_init.connect(_start_stem_cells, weak=False, dispatch_uid="nanogrid-stem-cells")
        self.worker = worker
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.engine_ok = True
        self.engine_checked_at = -HEARTBEAT_S  # the first beat asks
        self.consuming = True

    def start(self, worker) -> None:
        svc = current_services()
        try:
            svc.sandbox.check_runtime()
        except EngineUnavailable:
            pass  # the watchdog below keeps the worker from taking runs until the engine answers
        except Unavailable as exc:
            log.critical("%s", exc)
            raise RuntimeError(str(exc)) from None  # Celery stops the worker: it could run nothing
        self.node = worker.hostname
        self.started = time.time()
        self._take_over_previous_beat(svc)
        signals.task_received.connect(self._received, weak=False)
        self.thread = threading.Thread(target=self._loop, args=(svc,), name="nanogrid-heartbeat", daemon=True)
        self.thread.start()

    def _take_over_previous_beat(self, svc) -> None:
        """A worker restarted under the same name: what its previous run held is dispatched again
        before this one's heartbeat replaces it."""
        try:
            previous = svc.jobs.index.workers().get(self.node)
            if previous is not None and previous.get("pid") != os.getpid():
                svc.jobs.redispatch_held(self.node, previous)
        except Unavailable as exc:
            log.warning("cannot read this worker's previous heartbeat: %s", exc)

    def _received(self, **_kwargs) -> None:
        self.wake.set()  # the new message goes into the next beat, now

    def _loop(self, svc) -> None:
        while not self.stopping.is_set():
            self.beat(svc)
            self.wake.wait(HEARTBEAT_S)
            self.wake.clear()

    def beat(self, svc, stopped: bool = False) -> None:
        # The engine is asked every HEARTBEAT_S, not at every beat: a received message beats at once
        # (its job goes into the held list), and a ping per message would cost dockerd and this
        # process a few ms of CPU per run (a new client each time: the runs' own may be busy).
        if stopped or time.monotonic() - self.engine_checked_at >= HEARTBEAT_S:
            self._check_engine(svc)
        try:
            svc.jobs.index.beat(self.node, held_jobs(), pid=os.getpid(), started=self.started, stopped=stopped,
                                sandbox="ok" if self.engine_ok else "down", sandbox_kind=svc.sandbox.kind,
                                runtime=svc.settings.docker_runtime)
        except Unavailable as exc:
            log.debug("heartbeat not written: %s", exc)

    def _check_engine(self, svc) -> None:
        self.engine_checked_at = time.monotonic()
        engine_ok = svc.sandbox.engine_ok()
        if engine_ok != self.engine_ok:
            self._engine_changed(svc, engine_ok)
        if engine_ok:  # runs that its pool processes parked while the engine did not answer
            svc.jobs.release_parked(worker_id())

    def _engine_changed(self, svc, engine_ok: bool) -> None:
        """Stop consuming while the engine does not answer; resume when it does."""
        self.engine_ok = engine_ok
        consumer = self.worker.consumer
        queue = svc.settings.queue_name
        if not engine_ok and self.consuming:
            log.error("the sandbox engine does not answer: this worker takes no runs until it does "
                      "(they wait in the queue)")
            consumer.call_soon(consumer.cancel_task_queue, queue)
            self.consuming = False
        elif engine_ok and not self.consuming:
            log.warning("the sandbox engine answers again: this worker takes runs again")
            consumer.call_soon(consumer.add_task_queue, queue)
            self.consuming = True

    def stop(self, worker) -> None:
        """Warm shutdown, before the pool stops: the grace, then the last heartbeat."""
        svc = current_services()
        grace = svc.settings.shutdown_grace_s
        if grace is not None:
            deadline = time.monotonic() + grace
            while worker_state.active_requests and time.monotonic() < deadline:
                time.sleep(0.1)
            if worker_state.active_requests:
                pids = worker.pool.info.get("processes", []) if worker.pool else []
                log.warning("stopping %d runs in progress: the shutdown grace of %g s is over",
                            len(worker_state.active_requests), grace)
                for pid in pids:
                    try:
                        os.kill(pid, INTERRUPT_SIGNAL)
                    except ProcessLookupError:
                        pass
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=HEARTBEAT_S + 5)
        self.beat(svc, stopped=True)  # the reapers dispatch again whatever it still holds unclaimed


def _interrupt_runs(_signum, _frame) -> None:
    """In a pool process: the worker is shutting down and its grace is over."""
    current_services().sandbox.interrupt()


def _start_stem_cells(**_) -> None:
    """A pool process of a worker that runs functions begins: its sandbox readies stem cells."""
    start = getattr(current_services().sandbox, "start_stem_cells", None)
    if start is not None:
        try:
            start()
        except Exception:  # noqa: BLE001 - no stem cells (the engine is away, say): runs start their own
            log.warning("cannot start stem cells", exc_info=True)


def connect() -> None:
    signals.worker_process_init.connect(lambda **_: signal.signal(INTERRUPT_SIGNAL, _interrupt_runs), weak=False)
