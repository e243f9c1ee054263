"""The reaper: every accepted job reaches exactly one terminal state, and no sandbox outlives its job.

It runs as a thread in every worker's main process (a Celery bootstep, so it lives exactly as
long as the worker) and, each interval, works from the durable job store's index of unfinished
jobs (nanogrid.jobs.store), whatever Redis holds or misses:
- a PROCESSING job whose lease expired (its worker was killed, or its host died) becomes
  FAILED/worker_lost; its lease holder can no longer finish it because finish() is conditional;
- a PENDING job nobody claimed in time (the API died between record and publish, the message was
  lost) is dispatched again, with a doubling interval, and FAILED (not_started) once it has waited
  NANOGRID_PENDING_TIMEOUT_S;
- the runs a worker held when it stopped beating (worker/heartbeat.py; gone after
  jobs.index.WORKER_TTL_S) and nobody claimed are dispatched again at once, without waiting for
  their redispatch time;
- the Redis keys this process could not write (Redis was down) are written;
- every minute, the jobs finished longer ago than NANOGRID_JOB_RETENTION_DAYS are removed with
  their stored outputs (SQLite; in DynamoDB the table's TTL removes them);
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

from nanogrid.errors import NotFound, Unavailable
from nanogrid.jobs import ErrorType, JobRecord, Status
from nanogrid.jobs.index import alive
from nanogrid.jobs.records import error
from nanogrid.services import Services, current as current_services
from nanogrid.worker import serves_runs

log = logging.getLogger(__name__)
PER_PASS = 500  # jobs of each kind one pass handles; the rest wait for the next
EXPIRE_EVERY_S = 60.0  # how often a reaper removes the jobs past their retention


class Reaper:
    def __init__(self, services: Services):
        self.services = services
        self.expired_at = 0.0

    def run_once(self) -> None:
        """One pass; each step goes on whatever the one before met (a store or Redis outage)."""
        now = time.time()
        for step in (self.services.jobs.repair, lambda: self._expire_leases(now), lambda: self._redispatch_due(now),
                     lambda: self._dispatch_what_gone_workers_held(now), self._remove_leftover_sandboxes,
                     lambda: self._remove_expired_jobs(now)):
            try:
                step()
            except Unavailable as exc:
                log.warning("reaper: %s", exc)

    def _expire_leases(self, now: float) -> None:
        jobs = self.services.jobs
        for job in jobs.unfinished(Status.PROCESSING, due_by=now, limit=PER_PASS):
            done = jobs.finish(
                job["job_id"], None, Status.FAILED, only_if_lease_expired=True,
                error=error(ErrorType.WORKER_LOST,
                            "the worker running this job stopped before the job finished (crash or kill)"),
            )
            if done is not None:
                log.warning("job failed: worker lost", extra={"job_id": job["job_id"]})
                if (done.get("spec") or {}).get("max_concurrency"):
                    jobs.release_slot(done)  # its worker cannot: a run waiting for the slot starts

    def _redispatch_due(self, now: float) -> None:
        for job in self.services.jobs.unfinished(Status.PENDING, due_by=now, limit=PER_PASS):
            self._redispatch(job)

    def _dispatch_what_gone_workers_held(self, now: float) -> None:
        jobs = self.services.jobs
        for node, beat in jobs.index.workers().items():
            if not alive(beat, now):
                jobs.redispatch_held(node, beat)
                jobs.index.forget_worker(node)

    def _remove_expired_jobs(self, now: float) -> None:
        if now - self.expired_at >= EXPIRE_EVERY_S:
            self.expired_at = now
            self.services.jobs.expire()

    def _remove_leftover_sandboxes(self) -> None:
        running = {job["job_id"] for job in self.services.jobs.running()}
        removed = self.services.sandbox.remove_containers(keep=running)
        if removed:
            log.info("removed %d leftover sandboxes", removed)

    def _redispatch(self, listed: JobRecord) -> None:
        jobs = self.services.jobs
        try:
            job = jobs.get(listed["job_id"])  # the index may lag behind the record
        except NotFound:
            return
        if job["status"] != Status.PENDING:
            return
        timeout_s = self.services.settings.pending_timeout_s
        if time.time() - (job.get("retry_at") or job["created_at"]) >= timeout_s:  # queued since then
            jobs.finish(job["job_id"], None, Status.FAILED, error=error(
                ErrorType.NOT_STARTED,
                f"no worker started the job within {timeout_s:g} s ({job['dispatch_attempts']} dispatches)"))
            return
        log.warning("job not claimed in time, dispatching it again", extra={"job_id": job["job_id"]})
        jobs.redispatch(job["job_id"])


class ReaperStep(bootsteps.StartStopStep):
    """Runs the reaper beside the worker's consumer, in the main worker process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.enabled = serves_runs(worker)
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
