"""The Redis side of the jobs: what must be fast or shared between processes.

Per job, a status key (24 h) and a channel that only hints "this job changed" (readers always
re-read the durable record); each tenant's queued and running jobs, counted against its quotas;
the capped list of recent failures for `nanogrid status`; and the workers' heartbeats, each with
the run messages the worker holds but has not claimed yet, so the reaper can dispatch them again
within seconds of the worker's death. A job's keys carry its tenant. None of this is the source
of truth: the reaper works from the durable job store, and everything here is rebuilt from it
(`repair`, `nanogrid reindex`). Nothing outside nanogrid.jobs touches these keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterator

import redis

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.jobs import events
from nanogrid.jobs.records import TERMINAL, JobRecord, Status

STATUS_TTL_S = 24 * 3600
FAILURES = "nanogrid:failures"  # list, newest first: the last FAILURES_KEPT failed jobs (`nanogrid status`)
FAILURES_KEPT = 50
QUOTA_RETRY_AFTER_S = 10
# hash: worker node name -> JSON {"seen": epoch, "holds": [job ids], ...}: its heartbeat (see beat()).
WORKERS = "nanogrid:workers"
# A worker that has not beaten for this long is gone (it beats every 2 s: nanogrid/worker/heartbeat.py).
WORKER_TTL_S = 10.0


def alive(beat: dict, now: float) -> bool:
    """Whether the worker whose last heartbeat this is still runs."""
    return not beat.get("stopped") and beat.get("seen", 0) >= now - WORKER_TTL_S


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


class JobIndex:
    def __init__(self, settings: Settings, client: redis.Redis):
        self.settings = settings
        self.redis = client
        self._waiters = threading.local()  # each thread's pub/sub connection for watch(), kept between waits

    def write(self, job: JobRecord, tenant: str, previous_status: str | None = None) -> None:
        """Bring every key of the job in line with its record (Unavailable when Redis is down);
        a change of status (from previous_status) is also an event of the job's stream."""
        job_id, status = job["job_id"], job["status"]
        try:
            pipe = self.redis.pipeline()
            pipe.set(status_key(tenant, job_id), status, ex=STATUS_TTL_S)
            if status != previous_status:
                change = {"status": status}
                if job.get("attempt", 1) > 1:  # a retry (nanogrid.jobs.retries): which attempt this is
                    change["attempt"] = job["attempt"]
                events.add_to(pipe, tenant, job_id, events.STATUS, change)
                if status in TERMINAL:
                    events.add_to(pipe, tenant, job_id, events.END, {})
            if status == Status.PENDING:
                # Counted as queued until the reaper gives up on it.
                queued_since = job.get("retry_at") or job["created_at"]
                pipe.zadd(queued_key(tenant), {job_id: queued_since + self.settings.pending_timeout_s})
            else:
                pipe.zrem(queued_key(tenant), job_id)
            if status == Status.PROCESSING:
                pipe.zadd(running_key(tenant), {job_id: job["lease_until"]})
            else:
                pipe.zrem(running_key(tenant), job_id)
            if status == Status.FAILED:  # a job enters FAILED once: every later transition is refused
                pipe.lpush(FAILURES, json.dumps(_failure_summary(job)))
                pipe.ltrim(FAILURES, 0, FAILURES_KEPT - 1)
            pipe.publish(channel(tenant, job_id), status)
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def drop_stale(self, tenants_jobs: dict[str, set[str]], tenants: set[str]) -> int:
        """Remove from the tenants' queued and running sets every job not in tenants_jobs[tenant]
        (the unfinished jobs the durable store knows); how many entries went."""
        removed = 0
        try:
            for tenant in tenants:
                for key in (queued_key(tenant), running_key(tenant)):
                    stale = [m for m in self.redis.zrange(key, 0, -1) if m.decode() not in tenants_jobs.get(tenant, ())]
                    if stale:
                        removed += self.redis.zrem(key, *stale)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        return removed

    def tenants_with_entries(self) -> set[str]:
        """Tenants that have queued or running entries (for reindex)."""
        found = set()
        try:
            for key in self.redis.scan_iter(match="nanogrid:*:queued", count=500):
                found.add(key.decode().split(":")[1])
            for key in self.redis.scan_iter(match="nanogrid:*:running", count=500):
                found.add(key.decode().split(":")[1])
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        return found

    # -- workers: heartbeats and the messages they hold ----------------------------------------

    def beat(self, node: str, holds: list[str], **facts) -> None:
        """A worker says it is alive, which unclaimed run messages it holds, and facts about itself
        (its sandbox's state, say) that /health and `nanogrid status` show."""
        document = {"seen": time.time(), "holds": holds, **facts}
        try:
            self.redis.hset(WORKERS, node, json.dumps(document))
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def workers(self) -> dict[str, dict]:
        """Every worker's last heartbeat, by node name."""
        try:
            raw = self.redis.hgetall(WORKERS)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        found = {}
        for node, value in raw.items():
            try:
                found[node.decode()] = json.loads(value)
            except ValueError:
                continue
        return found

    def forget_worker(self, node: str) -> None:
        try:
            self.redis.hdel(WORKERS, node)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def recent_failures(self, limit: int) -> list[dict]:
        """The newest failed jobs: job_id, function_id, error_type, message, finished_at (epoch)."""
        found = []
        try:
            entries = self.redis.lrange(FAILURES, 0, max(0, limit - 1))
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        for raw in entries:
            try:
                found.append(json.loads(raw))
            except ValueError:
                continue
        return found

    # -- admission ------------------------------------------------------------------------------

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

    # -- waiting for a job ----------------------------------------------------------------------

    def fast_status(self, job_id: str, tenant: str) -> str | None:
        try:
            value = self.redis.get(status_key(tenant, job_id))
        except redis.RedisError:
            return None
        return value.decode() if value else None

    @contextlib.contextmanager
    def watch(self, tenant: str, job_id: str) -> Iterator["Watch"]:
        """Hints that the job reached a terminal state, for as long as the block lasts."""
        name = channel(tenant, job_id)
        pubsub = None
        try:
            pubsub = self._pubsub()
            pubsub.subscribe(name)
        except redis.RedisError:
            pubsub = self._drop_pubsub()
        watch = Watch(self, pubsub, name)
        try:
            yield watch
        finally:
            if watch.pubsub is not None:
                try:
                    watch.pubsub.unsubscribe(name)
                except redis.RedisError:
                    self._drop_pubsub()

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


class Watch:
    """One subscription to a job's channel (or none, while Redis is unreachable: then it just sleeps)."""

    def __init__(self, index: JobIndex, pubsub: redis.client.PubSub | None, name: str):
        self.index, self.pubsub, self.name = index, pubsub, name

    def wait(self, timeout_s: float) -> None:
        """Return when a terminal status is published, or after timeout_s; subscription
        confirmations, non-terminal statuses and other jobs' late messages do not end the wait."""
        if self.pubsub is None:
            time.sleep(min(timeout_s, 0.2))
            return
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                message = self.pubsub.get_message(timeout=left)
                if (message is not None and message.get("type") == "message"
                        and _text(message.get("channel")) == self.name and _text(message.get("data")) in TERMINAL):
                    return
        except redis.RedisError:
            self.pubsub = self.index._drop_pubsub()


def _text(value) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _failure_summary(job: JobRecord) -> dict:
    error = job.get("error") or {}
    return {"job_id": job["job_id"], "function_id": job["function_id"], "error_type": error.get("type"),
            "message": str(error.get("message") or "")[:300], "finished_at": job.get("finished_at")}
