"""The scheduler: `nanogrid scheduler` (every controller runs one; `nanogrid dev` runs one too).

Each pass it looks at every enabled schedule (nanogrid/schedules.py) and fires its latest tick if
that was not fired yet: the tick's run is created under the job id derived from schedule and tick,
so when two schedulers (or a scheduler restarted mid-tick) fire one tick, the job store's
conditional insert lets exactly one job exist. After downtime only the latest missed tick fires.
Then it sleeps until the next tick of any schedule, at most REFRESH_S, and reads the schedules
again every REFRESH_S, so a new, changed or deleted schedule counts within that time (a deleted
or disabled one is read afresh before each firing, so it never fires after the change is stored).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from nanogrid import logs, schedules
from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound, Unavailable
from nanogrid.jobs import TERMINAL, QuotaExceeded, Status
from nanogrid.services import Services

log = logging.getLogger(__name__)
REFRESH_S = 2.0
# A tick's job that another scheduler created and no worker has taken this long after: that
# scheduler may have died before publishing it, so this one publishes it (again, if it was only
# waiting in a backlog: the duplicate message loses the claim, the run runs once).
UNPUBLISHED_AFTER_S = 5.0


class Scheduler:
    def __init__(self, services: Services):
        self.services = services
        self.schedules: list[dict] = []
        self.loaded_at = float("-inf")
        self.done: dict[str, float] = {}  # the latest tick this process has seen through, by schedule
        # Tick jobs another scheduler created and no worker had taken yet: looked at again once
        # UNPUBLISHED_AFTER_S have passed (job id -> when, real time).
        self.unconfirmed: dict[str, float] = {}

    def run_once(self, now: float | None = None) -> float:
        """Fire what is due; seconds until the next tick of any schedule (at most REFRESH_S)."""
        now = time.time() if now is None else now
        if now - self.loaded_at >= REFRESH_S:
            self.schedules = [s for s in self.services.schedules.list() if s["enabled"]]
            self.loaded_at = now
        wait = REFRESH_S
        for job_id, due in list(self.unconfirmed.items()):
            left = due - time.time()
            if left <= 0:
                del self.unconfirmed[job_id]
                try:
                    self._publish_if_abandoned(job_id)
                except Unavailable as exc:
                    log.warning("could not look at an unconfirmed tick's run yet (%s)", exc, extra={"job_id": job_id})
                    self.unconfirmed[job_id] = time.time() + REFRESH_S
                    left = REFRESH_S
            wait = min(wait, max(left, 0.01))
        for schedule in self.schedules:
            tick = schedules.latest_tick(schedule, now)
            if tick is not None and tick > max(self.done.get(schedule["schedule_id"], 0), schedule["last_tick"] or 0):
                try:
                    self.fire(schedule["schedule_id"], tick)
                except Unavailable as exc:  # the store or Redis is away: the tick is tried again next pass
                    log.warning("schedule %s: tick not fired yet (%s)", schedule["schedule_id"], exc)
                    continue
                self.done[schedule["schedule_id"]] = tick
            wait = min(wait, schedules.next_tick(schedule, now) - now)
        return max(wait, 0.01)

    def fire(self, schedule_id: str, tick: float) -> str | None:
        """Run the schedule's function for tick, once; the job id, or None when nothing ran."""
        svc = self.services
        try:
            schedule = svc.schedules.get(schedule_id)
            function = svc.functions.get(schedule["function_id"])
        except NotFound:
            return None  # deleted since the last read
        if not schedule["enabled"] or schedules.latest_tick(schedule, tick) != tick:
            return None  # disabled, or its rhythm changed since the last read
        job_id = schedules.tick_job_id(schedule_id, tick)
        if schedule["overlap"] == "skip" and schedule.get("last_job_id") and schedule["last_job_id"] != job_id:
            try:
                if svc.jobs.get(schedule["last_job_id"])["status"] not in TERMINAL:
                    log.info("schedule %s: tick skipped, the previous run %s has not finished", schedule_id,
                             schedule["last_job_id"])
                    return None
            except NotFound:
                pass
        trigger = {"schedule_id": schedule_id, "tick": schedules.iso(tick)}
        try:
            svc.jobs.create(function, schedule["input"], job_id=job_id, trigger=trigger)
        except Conflict:
            self._publish_if_abandoned(job_id)
            return None  # another scheduler fired this tick
        except QuotaExceeded as exc:
            log.warning("schedule %s: tick skipped: %s", schedule_id, exc)
            return None
        logs.bind(job_id=job_id)
        try:
            svc.jobs.publish(job_id)
        except Unavailable:
            log.warning("schedule %s: the tick's run could not be queued; the reaper will", schedule_id)
        svc.schedules.fired(schedule_id, tick, job_id)
        log.info("schedule %s fired its tick %s", schedule_id, trigger["tick"], extra={"job_id": job_id})
        return job_id

    def _publish_if_abandoned(self, job_id: str) -> None:
        """The tick's job exists: publish it once more if no worker has taken it UNPUBLISHED_AFTER_S
        after it was created (its scheduler may have died before publishing it); until then, look
        again at that time. Only a job never dispatched again counts: one such look per tick."""
        try:
            job = self.services.jobs.get(job_id)
        except NotFound:
            return
        if job["status"] != Status.PENDING or job["dispatch_attempts"] != 1:
            return  # a worker has it, or it was dispatched again already
        due = job["created_at"] + UNPUBLISHED_AFTER_S
        if time.time() < due:
            self.unconfirmed[job_id] = due
            return
        log.warning("schedule %s: no worker took the run of tick %s within %g s (its scheduler may have stopped "
                    "before publishing it); publishing it again", job["trigger"]["schedule_id"],
                    job["trigger"]["tick"], UNPUBLISHED_AFTER_S, extra={"job_id": job_id})
        self.services.jobs.redispatch(job_id)


def run(settings: Settings) -> int:
    """The scheduler's process: passes until SIGTERM or SIGINT."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    scheduler = Scheduler(Services(settings))
    log.info("scheduler started (schedules read every %g s)", REFRESH_S)
    while not stopping.is_set():
        try:
            wait = scheduler.run_once()
        except Exception:  # noqa: BLE001 - one failed pass (the store away) must not stop the next
            log.exception("scheduler pass failed")
            wait = REFRESH_S
        stopping.wait(wait)
    log.info("scheduler stopped")
    return 0
