"""Schedules: a function run on a cron expression or every interval_s, by the scheduler
(nanogrid/scheduler), exactly once per tick however many schedulers run.

A schedule is a document in the functions table (`sch-<hex>`; it has no `name`, so it never
lists as a function). Its ticks are computed, not stored: for `interval_s`, every interval_s from
the schedule's anchor (when it was created or last changed); for `cron`, croniter's in the
schedule's timezone. A tick's run is the job whose id is derived from schedule and tick
(`tick_job_id`), so a second scheduler's firing of the same tick is refused by the job store's
conditional insert: no lock is needed for correctness.
"""

from __future__ import annotations

import copy
import datetime
import re
import time
import uuid
import zoneinfo
from typing import Any

from croniter import croniter

from nanogrid.errors import Conflict, NotFound
from nanogrid.functions import tenant_of
from nanogrid.storage import DocumentTable

ID_PATTERN = re.compile(r"^sch-[0-9a-f]{16}$")
FIELDS = ("cron", "interval_s", "timezone", "input", "overlap", "enabled")
OVERLAP = ("skip", "allow")
MAX_INPUT_CHARS = 256 * 1024
MAX_SCHEDULES_PER_FUNCTION = 100
# Every tick's job id lives in this namespace: uuid5(TICKS, "<schedule id>@<tick>").
TICKS = uuid.UUID("6a1f0c7e-2b1d-4c55-9d59-5d0f1a3e0b7c")


class ScheduleError(ValueError):
    """A schedule the API refuses; the message says why."""


def tick_job_id(schedule_id: str, tick: float) -> str:
    """The job a tick runs as: the same id for the same tick, whoever fires it."""
    return str(uuid.uuid5(TICKS, f"{schedule_id}@{tick:.3f}"))


def check(fields: dict, current: dict | None = None) -> dict:
    """The schedule's fields after applying `fields` (a POST body, or a PATCH on `current`)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ScheduleError(f"unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(FIELDS)}")
    merged = {"cron": None, "interval_s": None, "timezone": "UTC", "input": {}, "overlap": "allow", "enabled": True,
              **{k: current[k] for k in FIELDS if current and k in current}, **fields}
    if "cron" in fields and fields["cron"] is not None and "interval_s" not in fields:
        merged["interval_s"] = None  # a PATCH to a cron replaces the interval, and the other way round
    if "interval_s" in fields and fields["interval_s"] is not None and "cron" not in fields:
        merged["cron"] = None
    if (merged["cron"] is None) == (merged["interval_s"] is None):
        raise ScheduleError('give exactly one of "cron" (five fields, e.g. "*/5 * * * *") and "interval_s"')
    if merged["cron"] is not None:
        cron = merged["cron"]
        if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise ScheduleError(f"cron {cron!r} is not a cron expression of five fields "
                                "(minute hour day-of-month month day-of-week, e.g. \"*/5 * * * *\")")
    else:
        interval = merged["interval_s"]
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 1 <= interval <= 366 * 86400:
            raise ScheduleError("interval_s must be a number of seconds from 1 to 31622400 (a year)")
    try:
        zoneinfo.ZoneInfo(merged["timezone"]) if isinstance(merged["timezone"], str) else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {merged['timezone']!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
                            ) from None
    if not isinstance(merged["timezone"], str):
        raise ScheduleError("timezone must be an IANA time zone name (e.g. UTC)")
    if merged["overlap"] not in OVERLAP:
        raise ScheduleError('overlap must be "skip" (no new run while the last is not finished) or "allow"')
    if not isinstance(merged["enabled"], bool):
        raise ScheduleError("enabled must be true or false")
    return {k: merged[k] for k in FIELDS}


def latest_tick(schedule: dict, now: float) -> float | None:
    """The schedule's last tick at or before now (not before its anchor), or None."""
    anchor = schedule["anchor"]
    if now < anchor:
        return None
    if schedule.get("interval_s"):
        interval = schedule["interval_s"]
        return anchor + int((now - anchor) // interval) * interval
    zone = zoneinfo.ZoneInfo(schedule.get("timezone") or "UTC")
    # get_prev is strictly before its start: start just after now, so a tick at now counts.
    tick = croniter(schedule["cron"], datetime.datetime.fromtimestamp(now + 0.001, zone)).get_prev(float)
    return tick if tick >= anchor else None


def next_tick(schedule: dict, now: float) -> float:
    """The schedule's first tick after now."""
    anchor = schedule["anchor"]
    if now < anchor:
        return anchor if schedule.get("interval_s") else next_tick({**schedule, "anchor": 0}, anchor)
    if schedule.get("interval_s"):
        interval = schedule["interval_s"]
        return anchor + (int((now - anchor) // interval) + 1) * interval
    zone = zoneinfo.ZoneInfo(schedule.get("timezone") or "UTC")
    return croniter(schedule["cron"], datetime.datetime.fromtimestamp(now, zone)).get_next(float)


class ScheduleStore:
    def __init__(self, table: DocumentTable):
        self.table = table

    def create(self, function: dict, fields: dict) -> dict:
        if len(self.list(function["function_id"])) >= MAX_SCHEDULES_PER_FUNCTION:
            raise ScheduleError(f"a function may have at most {MAX_SCHEDULES_PER_FUNCTION} schedules")
        now = time.time()
        doc = {"schedule_id": "sch-" + uuid.uuid4().hex[:16], "rev": 1, "tenant": tenant_of(function),
               "function_id": function["function_id"], **check(fields), "anchor": now,
               "created_at": now, "updated_at": now, "last_job_id": None, "last_tick": None}
        self.table.insert(doc["schedule_id"], doc)
        return doc

    def get(self, schedule_id: str, function_id: str | None = None) -> dict:
        if not ID_PATTERN.match(schedule_id):
            raise NotFound(schedule_id)
        doc = self.table.get(schedule_id)
        if function_id is not None and doc["function_id"] != function_id:
            raise NotFound(schedule_id)
        return doc

    def list(self, function_id: str | None = None) -> list[dict]:
        """A function's schedules, or every schedule (the scheduler's view), oldest first."""
        docs = [d for d in self.table.scan() if "schedule_id" in d
                and (function_id is None or d["function_id"] == function_id)]
        return sorted(docs, key=lambda d: d["created_at"])

    def update(self, schedule_id: str, function_id: str, fields: dict) -> dict:
        for _ in range(10):
            current = self.get(schedule_id, function_id)
            doc = {**copy.deepcopy(current), **check(fields, current), "rev": current["rev"] + 1,
                   "updated_at": time.time()}
            if any(doc[k] != current[k] for k in ("cron", "interval_s", "timezone")) or (
                    doc["enabled"] and not current["enabled"]):
                doc["anchor"] = doc["updated_at"]  # a new rhythm starts now; so does a re-enabled one
            if self.table.replace(schedule_id, doc, current["rev"]):
                return doc
        raise Conflict(f"schedule {schedule_id} is being changed concurrently; retry")

    def fired(self, schedule_id: str, tick: float, job_id: str) -> None:
        """Remember a tick's job (for overlap: skip); a newer tick already recorded stays."""
        for _ in range(10):
            try:
                current = self.table.get(schedule_id)
            except NotFound:
                return
            if (current.get("last_tick") or 0) >= tick:
                return
            if self.table.replace(schedule_id, {**current, "rev": current["rev"] + 1, "last_tick": tick,
                                                "last_job_id": job_id}, current["rev"]):
                return

    def delete(self, schedule_id: str, function_id: str) -> None:
        self.get(schedule_id, function_id)
        self.table.delete(schedule_id)

    def delete_all(self, function_id: str) -> int:
        schedules = self.list(function_id)
        for schedule in schedules:
            self.table.delete(schedule["schedule_id"])
        return len(schedules)


def public(doc: dict, now: float | None = None) -> dict[str, Any]:
    """The API's view of a schedule."""
    now = time.time() if now is None else now
    view = {"schedule_id": doc["schedule_id"], "function_id": doc["function_id"],
            **{k: doc[k] for k in FIELDS}, "created_at": iso(doc["created_at"]), "updated_at": iso(doc["updated_at"]),
            "next_run_at": iso(next_tick(doc, now)) if doc["enabled"] else None,
            "last_run_at": iso(doc["last_tick"]) if doc.get("last_tick") else None,
            "last_job_id": doc.get("last_job_id")}
    return view


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds (a tick, in a job's trigger)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
