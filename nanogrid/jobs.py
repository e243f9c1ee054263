"""Job records: the durable document of every run, and the only way its state changes.

The document lives in a DocumentTable (DynamoDB or SQLite) and is the source of truth. Every
change is a compare-and-set on its `rev`, so two workers, a worker and the reaper, or a
redelivered message can never both move a job: the loser of a claim simply drops the message.
Redis carries what must be fast or shared: a status key per job (24 h), a channel that hints
"this job changed" (clients always re-read the record), the two indexes the reaper scans, and
each tenant's queued and running jobs, counted against its quotas before a new job is written.
A job belongs to its function's tenant; its Redis keys carry the tenant, and a lookup that names
a tenant treats another tenant's job exactly like an unknown id.

States: PENDING -> PROCESSING -> SUCCESS | FAILED (and PENDING -> FAILED for cancels,
dispatch failures and redispatch exhaustion).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from typing import Any, Callable

import redis

from nanogrid.config import Settings
from nanogrid.errors import NotFound, Unavailable
from nanogrid.functions import tenant_of
from nanogrid.storage import BlobStore, DocumentTable

PENDING, PROCESSING, SUCCESS, FAILED = "PENDING", "PROCESSING", "SUCCESS", "FAILED"
TERMINAL = frozenset({SUCCESS, FAILED})
STATUS_TTL_S = 24 * 3600
MAX_REDISPATCH_INTERVAL_S = 3600
LEASES = "nanogrid:leases"  # zset: PROCESSING job -> lease expiry
UNCLAIMED = "nanogrid:unclaimed"  # zset: PENDING job -> when to check it was claimed
FAILURES = "nanogrid:failures"  # list, newest first: the last FAILURES_KEPT failed jobs (`nanogrid status`)
FAILURES_KEPT = 50
OUTPUT_FIELDS = ("result", "stdout", "stderr")
PUBLIC_FIELDS = (
    "job_id", "function_id", "function_version", "status", "result", "stdout", "stderr", "exit_code",
    "error", "truncated", "duration_ms", "created_at", "started_at", "finished_at", "ai_usage",
    "peak_memory_bytes", "cpu_time_ms",
)


QUOTA_RETRY_AFTER_S = 10


class QuotaExceeded(Exception):
    """The tenant has as many queued or running jobs as its quota allows."""

    def __init__(self, message: str, retry_after_s: int = QUOTA_RETRY_AFTER_S):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def status_key(tenant: str, job_id: str) -> str:
    return f"nanogrid:{tenant}:job:{job_id}:status"


def channel(tenant: str, job_id: str) -> str:
    return f"nanogrid:{tenant}:job:{job_id}"


def queued_key(tenant: str) -> str:
    """zset: the tenant's PENDING jobs -> when the entry goes stale (the longest a job can wait)."""
    return f"nanogrid:{tenant}:queued"


def running_key(tenant: str) -> str:
    """zset: the tenant's PROCESSING jobs -> lease expiry (an expired lease no longer counts)."""
    return f"nanogrid:{tenant}:running"


def is_job_id(value: str) -> bool:
    try:
        return uuid.UUID(value).hex == value.replace("-", "") and len(value) == 36
    except ValueError:
        return False


class JobStore:
    def __init__(self, settings: Settings, table: DocumentTable, redis_client: redis.Redis, outputs: BlobStore):
        self.settings = settings
        self.table = table
        self.redis = redis_client
        self.outputs = outputs
        self._waiters = threading.local()  # each thread's pub/sub connection for wait(), kept between waits

    # -- creation and reads ------------------------------------------------------------------

    def create(self, function: dict, run_input: Any, limits: dict | None = None) -> dict:
        """A PENDING job; limits: what this run asks for on top of the function's (already validated)."""
        tenant = tenant_of(function)
        self.check_quota(tenant)
        now = time.time()
        job = {
            "job_id": str(uuid.uuid4()),
            "rev": 1,
            "tenant": tenant,
            "function_id": function["function_id"],
            "function_version": function["version"],
            "status": PENDING,
            "input": run_input,
            # What the run needs from the function at this version, so an update cannot change it.
            "spec": {**{k: function.get(k) for k in ("handler", "timeout_s", "memory_mb", "env")},
                     # The requested limits: the function's (top-level shortcuts of older documents
                     # included), then this run's; the worker resolves them against the settings.
                     "limits": {**{k: function[k] for k in ("timeout_s", "memory_mb") if function.get(k) is not None},
                                **(function.get("limits") or {}), **(limits or {})}},
            "result": None, "stdout": "", "stderr": "", "exit_code": None, "error": None,
            "truncated": False, "duration_ms": None,
            "created_at": now, "started_at": None, "finished_at": None,
            # The caller publishes right after this insert; if it dies first, the reaper redispatches.
            "dispatch_attempts": 1, "worker_id": None, "lease_until": None,
        }
        self.table.insert(job["job_id"], job)
        try:
            self._index(job)
        except Unavailable:
            # Without its index entry the reaper could never redispatch it: take it back, the
            # client gets a 503 and nothing was published.
            self.table.delete(job["job_id"])
            raise
        return job

    def get(self, job_id: str, tenant: str | None = None) -> dict:
        """The job; with a tenant, another tenant's job is NotFound like an unknown id."""
        if not is_job_id(job_id):
            raise NotFound(job_id)
        job = self.table.get(job_id)
        if tenant is not None and tenant_of(job) != tenant:
            raise NotFound(job_id)
        return job

    def check_quota(self, tenant: str) -> None:
        """QuotaExceeded when the tenant already has its most queued or running jobs."""
        max_running, max_queued = self.settings.tenant_max_running, self.settings.tenant_max_queued
        if not (max_running or max_queued):
            return
        now = time.time()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in (running_key(tenant), queued_key(tenant)):
                pipe.zremrangebyscore(key, "-inf", now)  # stale entries (a lost index update) expire
                pipe.zcard(key)
            _, running, _, queued = pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        if max_running and running >= max_running:
            raise QuotaExceeded(f"this tenant already has {running} running jobs, its quota "
                                "(NANOGRID_TENANT_MAX_RUNNING); try again when some have finished")
        if max_queued and queued >= max_queued:
            raise QuotaExceeded(f"this tenant already has {queued} queued jobs, its quota "
                                "(NANOGRID_TENANT_MAX_QUEUED); try again when some have started")

    def public(self, job: dict) -> dict:
        """The API's view of a job: outputs inlined from the output store when they were spilled there."""
        view = {name: job.get(name) for name in PUBLIC_FIELDS}
        if job.get("output_ref"):
            try:
                view.update(json.loads(self.outputs.get(job["output_ref"])))
            except NotFound:
                view["error"] = view["error"] or {"type": "output_lost", "message": "the stored output is gone"}
        for name in ("created_at", "started_at", "finished_at"):
            if view[name] is not None:
                view[name] = _iso(view[name])
        return view

    def fast_status(self, job_id: str, tenant: str) -> str | None:
        try:
            value = self.redis.get(status_key(tenant, job_id))
        except redis.RedisError:
            return None
        return value.decode() if value else None

    # -- transitions -------------------------------------------------------------------------

    def transition(self, job_id: str, change: Callable[[dict], bool]) -> dict | None:
        """Apply change() to a fresh copy until the compare-and-set wins.

        change() edits the document in place and returns False to abandon (the job is not in a
        state this transition applies to). Returns the stored document, or None if abandoned.
        """
        for _ in range(20):
            current = self.table.get(job_id)
            job = copy.deepcopy(current)
            if not change(job):
                return None
            job["rev"] = current["rev"] + 1
            if self.table.replace(job_id, job, current["rev"]):
                self._index(job)
                return job
        raise Unavailable(f"job {job_id}: too much contention on its record")

    def mark_dispatched(self, job_id: str) -> None:
        def change(job: dict) -> bool:
            if job["status"] != PENDING:
                return False
            job["dispatch_attempts"] += 1
            return True

        self.transition(job_id, change)

    def claim(self, job_id: str, worker_id: str) -> dict | None:
        def change(job: dict) -> bool:
            if job["status"] != PENDING:
                return False
            now = time.time()
            job.update(status=PROCESSING, worker_id=worker_id, started_at=now, lease_until=now + self.settings.lease_s)
            return True

        return self.transition(job_id, change)

    def renew(self, job_id: str, worker_id: str) -> bool:
        def change(job: dict) -> bool:
            if job["status"] != PROCESSING or job["worker_id"] != worker_id:
                return False
            job["lease_until"] = time.time() + self.settings.lease_s
            return True

        return self.transition(job_id, change) is not None

    def finish(self, job_id: str, worker_id: str | None, status: str, *, only_if_lease_expired: bool = False,
               **fields) -> dict | None:
        """Move a job to its terminal state; None when it is not this caller's to finish.

        worker_id names the lease holder finishing its own run. Without one, any non-terminal
        job is finished (cancel), or with only_if_lease_expired just a PROCESSING job whose
        holder stopped renewing (the reaper's worker_lost).
        """
        spilled = self._spill_outputs(job_id, fields)

        def change(job: dict) -> bool:
            if job["status"] in TERMINAL:
                return False
            if worker_id is not None and (job["status"] != PROCESSING or job["worker_id"] != worker_id):
                return False
            if only_if_lease_expired and not (job["status"] == PROCESSING and job["lease_until"] <= time.time()):
                return False
            now = time.time()
            job.update(spilled)
            job.update(status=status, finished_at=now, lease_until=None)
            if job["started_at"] is not None and job.get("duration_ms") is None:
                job["duration_ms"] = int((now - job["started_at"]) * 1000)
            return True

        return self.transition(job_id, change)

    def _spill_outputs(self, job_id: str, fields: dict) -> dict:
        outputs = {k: fields[k] for k in OUTPUT_FIELDS if k in fields}
        encoded = json.dumps(outputs).encode()
        if len(encoded) <= self.settings.inline_output_bytes:
            return fields
        key = f"jobs/{job_id}/output.json"
        self.outputs.put(key, encoded)
        rest = {k: v for k, v in fields.items() if k not in OUTPUT_FIELDS}
        return {**rest, "output_ref": key, "result": None, "stdout": "", "stderr": ""}

    # -- Redis side: status key, change hint, reaper indexes ---------------------------------

    def _index(self, job: dict) -> None:
        job_id, status, tenant = job["job_id"], job["status"], tenant_of(job)
        settings = self.settings
        try:
            pipe = self.redis.pipeline()
            pipe.set(status_key(tenant, job_id), status, ex=STATUS_TTL_S)
            if status == PENDING:
                # A long queue is no fault: each check that finds the job unclaimed dispatches it
                # again (duplicates lose the claim) and waits twice as long before the next.
                backoff = settings.redispatch_after_s * 2 ** max(job["dispatch_attempts"] - 1, 0)
                pipe.zadd(UNCLAIMED, {job_id: time.time() + min(backoff, MAX_REDISPATCH_INTERVAL_S)})
                # Counted as queued until the reaper gives up on it.
                pipe.zadd(queued_key(tenant), {job_id: job["created_at"] + settings.pending_timeout_s})
            else:
                pipe.zrem(UNCLAIMED, job_id)
                pipe.zrem(queued_key(tenant), job_id)
            if status == PROCESSING:
                pipe.zadd(LEASES, {job_id: job["lease_until"]})
                pipe.zadd(running_key(tenant), {job_id: job["lease_until"]})
            else:
                pipe.zrem(LEASES, job_id)
                pipe.zrem(running_key(tenant), job_id)
            if status == FAILED:  # a job enters FAILED once: every later transition is refused
                pipe.lpush(FAILURES, json.dumps(_failure_summary(job)))
                pipe.ltrim(FAILURES, 0, FAILURES_KEPT - 1)
            pipe.publish(channel(tenant, job_id), status)
            pipe.execute()
        except redis.RedisError as exc:
            # The record is already durable; the reaper's indexes are rebuilt from it by `reindex`.
            raise Unavailable(f"redis: {exc}") from exc

    def expired_leases(self, now: float) -> list[str]:
        return [m.decode() for m in self.redis.zrangebyscore(LEASES, 0, now)]

    def unclaimed_due(self, now: float) -> list[str]:
        return [m.decode() for m in self.redis.zrangebyscore(UNCLAIMED, 0, now)]

    def forget(self, job_id: str) -> None:
        self.redis.zrem(LEASES, job_id)
        self.redis.zrem(UNCLAIMED, job_id)

    def wait(self, job_id: str, timeout_s: float, tenant: str | None = None) -> dict:
        """Block until the job is terminal or timeout_s passes; return the fresh record either way.

        The pub/sub message only wakes us: the record is re-read after subscribing and after every
        wake, so a message lost during a Redis reconnect costs at most one poll interval.
        """
        deadline = time.monotonic() + timeout_s
        tenant = tenant if tenant is not None else tenant_of(self.get(job_id))
        pubsub = None
        try:
            try:
                pubsub = self._pubsub()
                pubsub.subscribe(channel(tenant, job_id))
            except redis.RedisError:
                pubsub = self._drop_pubsub()
            while True:
                status = self.fast_status(job_id, tenant)
                if status in TERMINAL or status is None:
                    job = self.get(job_id, tenant)
                    if job["status"] in TERMINAL:
                        return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.get(job_id, tenant)
                poll = min(remaining, 1.0)
                if pubsub is None:
                    time.sleep(min(poll, 0.2))
                    continue
                try:
                    self._wake(pubsub, channel(tenant, job_id), poll)
                except redis.RedisError:
                    pubsub = self._drop_pubsub()
        finally:
            if pubsub is not None:
                try:
                    pubsub.unsubscribe(channel(tenant, job_id))
                except redis.RedisError:
                    self._drop_pubsub()

    @staticmethod
    def _wake(pubsub: redis.client.PubSub, name: str, timeout_s: float) -> None:
        """Return when a terminal status is published on name, or after timeout_s; subscription
        confirmations, non-terminal statuses and other jobs' late messages do not end the wait."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if (message is not None and message.get("type") == "message"
                    and _text(message.get("channel")) == name and _text(message.get("data")) in TERMINAL):
                return

    def _pubsub(self) -> redis.client.PubSub:
        """This thread's pub/sub connection: reused by its next wait (a new one costs a connect)."""
        pubsub = getattr(self._waiters, "pubsub", None)
        if pubsub is None or self._waiters.pid != os.getpid():  # never a connection from before a fork
            pubsub = self._waiters.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            self._waiters.pid = os.getpid()
        return pubsub

    def _drop_pubsub(self) -> None:
        pubsub, self._waiters.pubsub = getattr(self._waiters, "pubsub", None), None
        if pubsub is not None:
            try:
                pubsub.close()
            except redis.RedisError:
                pass


def _text(value) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _failure_summary(job: dict) -> dict:
    error = job.get("error") or {}
    return {"job_id": job["job_id"], "function_id": job["function_id"], "error_type": error.get("type"),
            "message": str(error.get("message") or "")[:300], "finished_at": job.get("finished_at")}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
