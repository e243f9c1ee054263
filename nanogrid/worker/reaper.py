"""The reaper: every accepted job reaches exactly one terminal state, and no sandbox outlives its job.

It runs as a thread in every worker's main process (a Celery bootstep, so it lives exactly as
long as the worker) and does three things each interval:
- a PROCESSING job whose lease expired (its worker was killed, or its host died) becomes
  FAILED/worker_lost; its lease holder can no longer finish it because finish() is conditional;
- a PENDING job nobody claimed in time (the API died between record and publish, or an early-
  acked message died with its worker) is dispatched again, with a growing interval, and FAILED
  (not_started) once it has waited NANOGRID_PENDING_TIMEOUT_S;
- sandboxes labelled with a job that is no longer running are removed, and so are warm sandboxes
  (nanogrid/sandbox/warm.py) that no live worker process keeps: exited ones, and those whose
  owner was a process of this host that is gone (a SIGKILLed pool process, a crashed worker).
  Warm sandboxes of deleted functions and superseded versions are removed by their owner's pool,
  which checks the function registry every reaper interval.
Several reapers at once are safe: every change is a compare-and-set on the job record.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import bootsteps

from nanogrid.errors import NotFound
from nanogrid.jobs import TERMINAL, ErrorType, Status
from nanogrid.jobs.records import error
from nanogrid.services import Services, current as current_services

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, services: Services):
        self.services = services

    def run_once(self) -> None:
        now = time.time()
        jobs = self.services.jobs
        for job_id in jobs.index.expired_leases(now):
            done = jobs.finish(
                job_id, None, Status.FAILED, only_if_lease_expired=True,
                error=error(ErrorType.WORKER_LOST,
                            "the worker running this job stopped before the job finished (crash or kill)"),
            )
            if done is not None:
                log.warning("job failed: worker lost", extra={"job_id": job_id})
            else:
                self._forget_if_settled(job_id)
        for job_id in jobs.index.unclaimed_due(now):
            self._redispatch(job_id)
        running = {job_id for job_id, _ in jobs.running()}
        removed = self.services.sandbox.remove_containers(keep=running)
        if removed:
            log.info("removed %d leftover sandboxes", removed)

    def _redispatch(self, job_id: str) -> None:
        jobs = self.services.jobs
        try:
            job = jobs.get(job_id)
        except NotFound:
            jobs.forget(job_id)
            return
        if job["status"] != Status.PENDING:
            jobs.forget(job_id)
            return
        timeout_s = self.services.settings.pending_timeout_s
        if time.time() - job["created_at"] >= timeout_s:
            jobs.finish(job_id, None, Status.FAILED, error=error(
                ErrorType.NOT_STARTED,
                f"no worker started the job within {timeout_s:g} s ({job['dispatch_attempts']} dispatches)"))
            return
        log.warning("job not claimed in time, dispatching it again", extra={"job_id": job_id})
        jobs.redispatch(job_id)

    def _forget_if_settled(self, job_id: str) -> None:
        try:
            if self.services.jobs.get(job_id)["status"] in TERMINAL:
                self.services.jobs.forget(job_id)
        except NotFound:
            self.services.jobs.forget(job_id)


class ReaperStep(bootsteps.StartStopStep):
    """Runs the reaper beside the worker's consumer, in the main worker process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, worker) -> None:
        svc = current_services()
        reaper = Reaper(svc)

        def loop() -> None:
            while True:
                try:
                    reaper.run_once()
                except Exception:  # noqa: BLE001 - one failed pass (store down) must not stop the next
                    log.exception("reaper pass failed")
                if self.stopping.wait(svc.settings.reaper_interval_s):
                    return

        self.thread = threading.Thread(target=loop, name="nanogrid-reaper", daemon=True)
        self.thread.start()

    def stop(self, worker) -> None:
        self.stopping.set()
