"""Job records: the durable document of every run, and the only way its state changes.

The document lives in a DocumentTable (DynamoDB or SQLite) and is the source of truth. Every
change is a compare-and-set on its `rev`, so two workers, a worker and the reaper, or a
redelivered message can never both move a job: the loser of a claim simply drops the message.
The record also carries its place in the table's `due` index while it is unfinished: PENDING jobs
by when to check that someone took them, PROCESSING jobs by lease expiry. That index, not Redis,
is what the reaper sweeps, so a job whose Redis keys were never written (an API killed
mid-request, a Redis outage) is still found.

After each change the job's Redis keys (nanogrid.jobs.index) are brought in line with it. When
Redis does not answer, the change stands (it is durable) and the keys are repaired later: by the
next transition, by this process's `repair()` (the reaper runs it every pass) or by `reindex()`.

A job belongs to its function's tenant, and a lookup that names a tenant treats another tenant's
job exactly like an unknown id. A run is submitted here too: the record is written, then the run's
message is published; if the broker refuses it the job ends FAILED/enqueue_failed at once. The
reaper dispatches unclaimed jobs again through the same publish.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import redis

from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound, Unavailable
from nanogrid.functions import tenant_of
from nanogrid.jobs.retries import delay_before_next
from nanogrid.jobs.events import JobEvents
from nanogrid.jobs.index import JobIndex
from nanogrid.jobs.records import (OUTPUT_FIELDS, PUBLIC_FIELDS, TERMINAL, ErrorType, JobRecord, Status, error,
                                   is_job_id, iso, pending_callback)
from nanogrid.storage import BlobStore, DocumentTable, IndexEntry, cursor_after
from nanogrid.task_names import CALLBACK_TASK, RUN_TASK
from nanogrid.transport.broker import Broker

log = logging.getLogger(__name__)
MAX_REDISPATCH_INTERVAL_S = 3600
IDEMPOTENCY_TTL_S = 24 * 3600  # how long an Idempotency-Key stands for its job
# The table's indexes (nanogrid.storage.TABLES): unfinished jobs, and the history by tenant and function.
DUE, TENANT_JOBS, FUNCTION_JOBS = "due", "tenant_jobs", "function_jobs"
# The runs that wait for a layer's build (a Redis set per layer); the reaper's redispatch covers a
# set that Redis lost.
LAYER_WAITERS = "nanogrid:layer-waiters:{sha}"
# A function's max_concurrency: the runs that hold its slots (a sorted set, each scored by when its
# hold runs out unless renewed with the run's lease, so a dead worker's slot frees itself) and the
# runs that wait for one (a list, oldest first).
FUNCTION_SLOTS = "nanogrid:fn-slots:{function_id}"
FUNCTION_WAITERS = "nanogrid:fn-waiters:{function_id}"
# Takes a slot for ARGV[3] (re-entrant: a run that holds one keeps it) if fewer than ARGV[4] are held.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
# Runs a worker's engine refused twice (the second time, when the requeued message came straight
# back to the same worker before its watchdog stopped it consuming), per worker main process.
ENGINE_PARKED = "nanogrid:engine-parked:{worker}"
WAKE_TRIES = 20  # waiters looked at per freed slot (cancelled or finished ones are skipped)
HISTORY_PAGE_MAX = 200
HISTORY_SCAN_PAGES = 20  # pages of one index read for one history page when a status filter skips most


class JobStore:
    def __init__(self, settings: Settings, table: DocumentTable, redis_client: redis.Redis, outputs: BlobStore,
                 broker: Broker):
        self.settings = settings
        self.table = table
        self.redis = redis_client
        self.index = JobIndex(settings, redis_client)
        self.events = JobEvents(redis_client)
        self.outputs = outputs
        self.broker = broker
        self._unindexed: dict[str, str] = {}  # job id -> tenant: Redis keys this process could not write
        self._unindexed_lock = threading.Lock()

    # -- creation and dispatch -----------------------------------------------------------------

    def create(self, function: dict, run_input: Any, limits: dict | None = None, job_id: str | None = None,
               callback_url: str | None = None, trigger: dict | None = None, alias: str | None = None) -> JobRecord:
        """A PENDING job; limits: what this run asks for on top of the function's (already validated);
        callback_url: where to POST the job when it ends (else the function's, if any); trigger:
        what started it other than a request (a schedule's tick).
        With job_id (an idempotent request's, a tick's), Conflict when that job exists already."""
        tenant = tenant_of(function)
        self.index.check_quota(tenant)
        now = time.time()
        job: JobRecord = {
            "job_id": job_id or str(uuid.uuid4()),
            "rev": 1,
            "tenant": tenant,
            "function_id": function["function_id"],
            "function_version": function["version"],
            "status": Status.PENDING,
            "input": run_input,
            # What the run needs from the function at this version, so an update cannot change it.
            "spec": {**{k: function.get(k) for k in ("handler", "timeout_s", "memory_mb", "env", "retries",
                                                     "layer_sha256", "init", "max_concurrency", "secrets")},
                     # The requested limits: the function's (top-level shortcuts of older documents
                     # included), then this run's; the worker resolves them against the settings.
                     "limits": {**{k: function[k] for k in ("timeout_s", "memory_mb") if function.get(k) is not None},
                                **(function.get("limits") or {}), **(limits or {})}},
            "result": None, "stdout": "", "stderr": "", "exit_code": None, "error": None,
            "truncated": False, "duration_ms": None,
            "created_at": now, "started_at": None, "finished_at": None,
            # The caller publishes right after this insert; if it dies first, the reaper redispatches.
            "dispatch_attempts": 1, "worker_id": None, "lease_until": None,
            "attempt": 1, "attempts": [], "callback_url": callback_url or function.get("callback_url"),
            "trigger": trigger, "alias": alias,
        }
        self.table.insert(job["job_id"], job, self._entries(job))
        try:
            self.index.write(job, tenant)
        except Unavailable:
            # Without its index entry the reaper could never redispatch it: take it back, the
            # client gets a 503 and nothing was published.
            self.table.delete(job["job_id"])
            raise
        return job

    def submit(self, function: dict, run_input: Any, limits: dict | None = None,
               idempotency: tuple[str, str] | None = None,
               callback_url: str | None = None, alias: str | None = None) -> tuple[JobRecord, bool]:
        """Create the job and publish its run; (the job, whether it is one an earlier request made).

        idempotency: (the client's key, the request's fingerprint). The same key (per tenant, for
        IDEMPOTENCY_TTL_S) gives the same job whichever API process answers, and with another
        request IdempotencyConflict. A broker that refuses the run ends the job FAILED
        (enqueue_failed) and raises Unavailable, so nothing is left PENDING unpublished.
        """
        job_id = None
        if idempotency is not None:
            job_id, earlier = self._idempotent_job(tenant_of(function), *idempotency)
            if earlier is not None:
                return earlier, True
        try:
            job = self.create(function, run_input, limits, job_id, callback_url, alias=alias)
        except Conflict:  # another request with the key made it just now
            return self.get(job_id), True
        try:
            self.publish(job["job_id"])
        except Unavailable:
            self.finish(job["job_id"], None, Status.FAILED, error=error(
                ErrorType.ENQUEUE_FAILED, "the job could not be queued; the broker is unavailable"))
            raise
        return job, False

    def _idempotent_job(self, tenant: str, key: str, fingerprint: str) -> tuple[str, JobRecord | None]:
        """The job id an idempotency key stands for, and its job if it was made already.

        The key is claimed by a conditional insert of its own record, naming the job id before the
        job exists, so two API processes racing with one key agree on one job; a request that claimed
        the key and died before making the job leaves it to the next request with that key."""
        record_id = idempotency_record_id(tenant, key)
        claim = {"rev": 1, "job_id": str(uuid.uuid4()), "fingerprint": fingerprint,
                 "expires_at": time.time() + IDEMPOTENCY_TTL_S}
        try:
            self.table.insert(record_id, claim)
            return claim["job_id"], None
        except Conflict:
            existing = self.table.get(record_id)
        if existing.get("expires_at", 0) <= time.time():  # an old key, not yet swept: claim it afresh
            if self.table.replace(record_id, {**claim, "rev": existing["rev"] + 1}, existing["rev"]):
                return claim["job_id"], None
            existing = self.table.get(record_id)
        if existing["fingerprint"] != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used for another request (a different function, "
                                      "input or settings); use a new key for a new request")
        try:
            return existing["job_id"], self.get(existing["job_id"])
        except NotFound:
            return existing["job_id"], None

    def publish(self, job_id: str, countdown_s: float = 0) -> None:
        self.broker.send(RUN_TASK, [job_id], countdown_s)

    def redispatch(self, job_id: str) -> None:
        """Publish an unclaimed job's run again (a duplicate loses the claim) and count it."""
        self.publish(job_id)
        self.mark_dispatched(job_id)

    def redispatch_held(self, node: str, beat: dict) -> int:
        """Dispatch again the runs a gone worker held (its last heartbeat) that nobody claimed."""
        dispatched = 0
        for job_id in beat.get("holds", []):
            try:
                if self.get(job_id)["status"] != Status.PENDING:
                    continue
            except NotFound:
                continue
            self.redispatch(job_id)
            dispatched += 1
        if dispatched:
            log.warning("worker %s is gone; dispatched again the %d unclaimed runs it held", node, dispatched)
        return dispatched

    # -- reads ---------------------------------------------------------------------------------

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; with a tenant, another tenant's job is NotFound like an unknown id."""
        if not is_job_id(job_id):
            raise NotFound(job_id)
        job = self.table.get(job_id)
        if tenant is not None and tenant_of(job) != tenant:
            raise NotFound(job_id)
        return job

    def public(self, job: JobRecord) -> dict:
        """The API's view of a job: outputs inlined from the output store when they were spilled there."""
        view = {name: job.get(name) for name in PUBLIC_FIELDS}
        if job.get("output_ref"):
            try:
                view.update(json.loads(self.outputs.get(job["output_ref"])))
            except NotFound:
                view["error"] = view["error"] or error(ErrorType.OUTPUT_LOST, "the stored output is gone")
        for name in ("created_at", "started_at", "finished_at"):
            if view[name] is not None:
                view[name] = iso(view[name])
        view["callbacks"] = [{**callback, **({"delivered_at": iso(callback["delivered_at"])}
                                             if callback.get("delivered_at") else {})}
                             for callback in job.get("callbacks", [])]
        view["attempt"] = job.get("attempt", 1)
        view["attempts"] = [{**attempt, **{name: iso(attempt[name]) for name in ("started_at", "finished_at")
                                           if attempt.get(name) is not None}} for attempt in job.get("attempts", [])]
        return view

    def unfinished(self, status: Status, *, due_by: float | None = None, limit: int | None = None) -> Iterator[JobRecord]:
        """PENDING or PROCESSING jobs from the durable index, the most overdue first: with due_by,
        only those due by then (PENDING: to be checked for a claim; PROCESSING: lease expired)."""
        cursor, seen = None, 0
        while True:
            page = self.table.query(DUE, status, until=due_by, limit=min(limit - seen, 200) if limit else 200,
                                    cursor=cursor)
            for job in page.docs:
                yield job
            seen += len(page.docs)
            cursor = page.cursor
            if cursor is None or (limit is not None and seen >= limit):
                return

    def history(self, tenant: str, *, function_id: str | None = None, status: Status | None = None,
                since: float | None = None, until: float | None = None, limit: int = 50,
                cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs (or one function's), newest first, from the durable store; the cursor of
        the next page, or None after the last. A status filter is applied as the index is read."""
        index, partition = ((FUNCTION_JOBS, function_partition(tenant, function_id)) if function_id
                            else (TENANT_JOBS, tenant))
        found: list[JobRecord] = []
        now = time.time()
        for _ in range(HISTORY_SCAN_PAGES):
            page = self.table.query(index, partition, since=since, until=until, newest_first=True,
                                    limit=min(limit, HISTORY_PAGE_MAX), cursor=cursor)
            for job in page.docs:
                if (job.get("expires_at") or now + 1) > now and (status is None or job["status"] == status):
                    found.append(job)
                    if len(found) == limit:  # the next page starts after this one
                        more = job is not page.docs[-1] or page.cursor is not None
                        return found, cursor_after(job["created_at"], job["job_id"]) if more else None
            cursor = page.cursor
            if cursor is None:
                break
        return found, cursor

    def expire(self) -> int:
        """Delete the records (and stored outputs) of jobs finished longer ago than the retention."""
        expired = [doc_id for doc_id in self.table.expire(time.time()) if is_job_id(doc_id)]  # not idempotency keys
        for job_id in expired:
            self.outputs.delete(output_key(job_id))
        if expired:
            log.info("removed %d jobs past their retention (NANOGRID_JOB_RETENTION_DAYS)", len(expired))
        return len(expired)

    def running(self) -> list[JobRecord]:
        """The jobs holding a lease now (whether or not it has expired), oldest lease first."""
        return list(self.unfinished(Status.PROCESSING))

    def recent_failures(self, limit: int) -> list[dict]:
        return self.index.recent_failures(limit)

    def wait(self, job_id: str, timeout_s: float, tenant: str | None = None) -> JobRecord:
        """Block until the job is terminal or timeout_s passes; return the fresh record either way.

        The pub/sub message only wakes us: the record is re-read after subscribing and after every
        wake, so a message lost during a Redis reconnect costs at most one poll interval.
        """
        deadline = time.monotonic() + timeout_s
        tenant = tenant if tenant is not None else tenant_of(self.get(job_id))
        with self.index.watch(tenant, job_id) as watch:
            while True:
                status = self.index.fast_status(job_id, tenant)
                if status in TERMINAL or status is None:
                    job = self.get(job_id, tenant)
                    if job["status"] in TERMINAL:
                        return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.get(job_id, tenant)
                watch.wait(min(remaining, 1.0))

    # -- transitions -------------------------------------------------------------------------

    def transition(self, job_id: str, change: Callable[[JobRecord], bool]) -> JobRecord | None:
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
            if self.table.replace(job_id, job, current["rev"], self._entries(job)):
                self._write_index(job, current["status"])
                return job
        raise Unavailable(f"job {job_id}: too much contention on its record")

    def update_finished(self, job_id: str, change: Callable[[JobRecord], bool]) -> JobRecord | None:
        """Like transition, for a finished job's bookkeeping (its callbacks): the status stays, so
        nothing in Redis changes."""
        for _ in range(20):
            current = self.table.get(job_id)
            job = copy.deepcopy(current)
            if current["status"] not in TERMINAL or not change(job):
                return None
            job["rev"] = current["rev"] + 1
            if self.table.replace(job_id, job, current["rev"], self._entries(job)):
                return job
        raise Unavailable(f"job {job_id}: too much contention on its record")

    def _entries(self, job: JobRecord) -> dict[str, IndexEntry | None]:
        """The record's place in the indexes: in `due`, when to look at it again until it is
        finished; in the history, its tenant's and its function's, by creation time."""
        tenant, status = tenant_of(job), job["status"]
        history = {TENANT_JOBS: IndexEntry(tenant, job["created_at"]),
                   FUNCTION_JOBS: IndexEntry(function_partition(tenant, job["function_id"]), job["created_at"])}
        if status == Status.PENDING:
            # A long queue is no fault: each check that finds the job unclaimed dispatches it again
            # (duplicates lose the claim) and waits twice as long before the next.
            backoff = self.settings.redispatch_after_s * 2 ** max(job["dispatch_attempts"] - 1, 0)
            since = max(time.time(), job.get("retry_at") or 0)  # a retry is not overdue before its time
            return {DUE: IndexEntry(status, since + min(backoff, MAX_REDISPATCH_INTERVAL_S)), **history}
        if status == Status.PROCESSING:
            return {DUE: IndexEntry(status, job["lease_until"]), **history}
        return {DUE: None, **history}

    def _write_index(self, job: JobRecord, previous_status: str | None) -> None:
        """The job's Redis keys after a durable change; if Redis does not answer, remember to repair."""
        tenant = tenant_of(job)
        try:
            self.index.write(job, tenant, previous_status)
        except Unavailable as exc:
            with self._unindexed_lock:
                first = not self._unindexed
                self._unindexed[job["job_id"]] = tenant
            log.warning("job recorded %s in the job store, but its Redis keys could not be written (%s); "
                        "they will be repaired when Redis answers%s", job["status"], exc,
                        "" if first else " (more jobs are waiting for the same repair)",
                        extra={"job_id": job["job_id"], "status": job["status"]})
            return
        with self._unindexed_lock:
            self._unindexed.pop(job["job_id"], None)

    def repair(self) -> int:
        """Write the Redis keys this process could not write before; how many jobs it repaired."""
        with self._unindexed_lock:
            pending = dict(self._unindexed)
        repaired = 0
        for job_id, tenant in pending.items():
            try:
                job = self.table.get(job_id)
            except NotFound:
                job = None
            try:
                if job is not None:
                    self.index.write(job, tenant)
            except Unavailable:
                return repaired  # still down: the next pass tries again
            with self._unindexed_lock:
                self._unindexed.pop(job_id, None)
            repaired += 1
        if repaired:
            log.info("repaired the Redis keys of %d jobs from the job store", repaired)
        return repaired

    def reindex(self) -> dict:
        """Rebuild the Redis side from the durable store: every unfinished job's keys written
        again, and the tenants' queued and running entries of jobs that are no longer so removed."""
        unfinished: dict[str, set[str]] = {}
        count = 0
        for status in (Status.PENDING, Status.PROCESSING):
            for job in self.unfinished(status):
                tenant = tenant_of(job)
                self.index.write(job, tenant)
                unfinished.setdefault(tenant, set()).add(job["job_id"])
                count += 1
        stale = self.index.drop_stale(unfinished, self.index.tenants_with_entries() | set(unfinished))
        with self._unindexed_lock:
            self._unindexed.clear()
        return {"unfinished_jobs": count, "stale_entries_removed": stale}

    def mark_dispatched(self, job_id: str) -> None:
        def change(job: JobRecord) -> bool:
            if job["status"] != Status.PENDING:
                return False
            job["dispatch_attempts"] += 1
            return True

        self.transition(job_id, change)

    def claim(self, job_id: str, worker_id: str) -> JobRecord | None:
        def change(job: JobRecord) -> bool:
            if job["status"] != Status.PENDING:
                return False
            now = time.time()
            job.update(status=Status.PROCESSING, worker_id=worker_id, started_at=now,
                       lease_until=now + self.settings.lease_s)
            return True

        return self.transition(job_id, change)

    def requeue(self, job_id: str, worker_id: str, publish: bool = True) -> bool:
        """Give a claimed job back (PROCESSING -> PENDING) when nothing of its run started, and
        publish it again (unless publish is False: the caller parks it, park_for_engine); False
        when it is not this holder's to give back."""
        def change(job: JobRecord) -> bool:
            if job["status"] != Status.PROCESSING or job["worker_id"] != worker_id:
                return False
            job.update(status=Status.PENDING, worker_id=None, started_at=None, lease_until=None,
                       engine_retries=job.get("engine_retries", 0) + 1)
            return True

        if self.transition(job_id, change) is None:
            return False
        if not publish:
            return True
        try:
            self.publish(job_id)
        except Unavailable:  # the record is PENDING: the reaper's sweep dispatches it again
            log.warning("could not publish the requeued job; the reaper will", extra={"job_id": job_id})
        return True

    def park_for_engine(self, job_id: str, worker: str) -> None:
        """Keep a requeued run with the worker (its main process, host:pid) whose engine refused it,
        until that worker's heartbeat finds the engine answering (release_parked); if the worker
        dies first, the run is PENDING and the reaper dispatches it again."""
        try:
            self.redis.rpush(ENGINE_PARKED.format(worker=worker), job_id)
        except redis.RedisError as exc:
            log.warning("could not park the run for the engine (%s); the reaper will dispatch it", exc,
                        extra={"job_id": job_id})

    def release_parked(self, worker: str) -> int:
        """Dispatch again the runs parked with this worker (its engine answers); how many."""
        key, released = ENGINE_PARKED.format(worker=worker), 0
        try:
            while (job_id := self.redis.lpop(key)) is not None:
                self.publish(job_id.decode())
                released += 1
        except (redis.RedisError, Unavailable) as exc:  # PENDING: the reaper dispatches what is left
            log.warning("could not dispatch the runs parked for the engine: %s", exc)
        return released

    def hold_for_layer(self, job_id: str, worker_id: str, sha: str) -> bool:
        """Give a claimed job back (PROCESSING -> PENDING) to wait for its layer's build, which
        dispatches it again when it ends (release_waiting); False when it is not this holder's."""
        try:
            self.redis.sadd(LAYER_WAITERS.format(sha=sha), job_id)
        except redis.RedisError as exc:
            log.warning("could not note the run as waiting for its layer (%s); the reaper will dispatch it", exc,
                        extra={"job_id": job_id})
        return self.give_back_to_wait(job_id, worker_id)

    def give_back_to_wait(self, job_id: str, worker_id: str) -> bool:
        """PROCESSING -> PENDING, by its holder, for a run that has not started and waits."""
        def change(job: JobRecord) -> bool:
            if job["status"] != Status.PROCESSING or job["worker_id"] != worker_id:
                return False
            job.update(status=Status.PENDING, worker_id=None, started_at=None, lease_until=None)
            return True

        return self.transition(job_id, change) is not None

    def release_waiting(self, sha: str) -> int:
        """Dispatch again the runs that wait for this layer (its build ended); how many."""
        key = LAYER_WAITERS.format(sha=sha)
        try:
            waiting = [member.decode() for member in self.redis.smembers(key)]
            for job_id in waiting:
                self.redis.srem(key, job_id)
                self.publish(job_id)
        except (redis.RedisError, Unavailable) as exc:  # they stay PENDING: the reaper dispatches them again
            log.warning("could not dispatch the runs that waited for layer %s: %s", sha[:12], exc)
            return 0
        return len(waiting)

    # -- per-function concurrency (the function's max_concurrency) -----------------------------

    def wait_for_slot(self, job: JobRecord, worker_id: str) -> JobRecord | None:
        """The claimed job, once it holds one of its function's slots; None when all are taken: then
        it is PENDING again, waiting for the slot a finishing run frees (release_slot)."""
        if self._take_slot(job):
            return job
        job_id, waiters = job["job_id"], FUNCTION_WAITERS.format(function_id=job["function_id"])
        self.give_back_to_wait(job_id, worker_id)
        self.redis.rpush(waiters, job_id)
        if not self._take_slot(job):  # none freed between the first look and the wait: it waits
            return None
        # One freed meanwhile, maybe before this run was listed: run it after all, unless a wake
        # already gave it to another worker (which then holds the same slot: it is the job's).
        self.redis.lrem(waiters, 0, job_id)
        return self.claim(job_id, worker_id)

    def release_slot(self, job: JobRecord) -> None:
        """The run is over (or gave its slot up): free its slot and dispatch the oldest waiting run."""
        function_id = job["function_id"]
        try:
            self.redis.zrem(FUNCTION_SLOTS.format(function_id=function_id), job["job_id"])
            for _ in range(WAKE_TRIES):
                waiting = self.redis.lpop(FUNCTION_WAITERS.format(function_id=function_id))
                if waiting is None:
                    return
                try:
                    if self.get(waiting.decode())["status"] == Status.PENDING:
                        self.publish(waiting.decode())
                        return
                except NotFound:
                    continue
        except (redis.RedisError, Unavailable) as exc:  # the waiting runs stay PENDING: the reaper redispatches them
            log.warning("could not free a slot of function %s: %s", function_id, exc)

    def renew_slot(self, job: JobRecord) -> None:
        self.redis.zadd(FUNCTION_SLOTS.format(function_id=job["function_id"]),
                        {job["job_id"]: time.time() + self.settings.lease_s}, xx=True)

    def _take_slot(self, job: JobRecord) -> bool:
        now = time.time()
        return bool(self.redis.eval(TAKE_SLOT, 1, FUNCTION_SLOTS.format(function_id=job["function_id"]),
                                    now, now + self.settings.lease_s, job["job_id"], job["spec"]["max_concurrency"]))

    def renew(self, job_id: str, worker_id: str) -> bool:
        def change(job: JobRecord) -> bool:
            if job["status"] != Status.PROCESSING or job["worker_id"] != worker_id:
                return False
            job["lease_until"] = time.time() + self.settings.lease_s
            return True

        return self.transition(job_id, change) is not None

    def finish(self, job_id: str, worker_id: str | None, status: Status, *, only_if_lease_expired: bool = False,
               **fields) -> JobRecord | None:
        """Move a job to its terminal state; None when it is not this caller's to finish.

        worker_id names the lease holder finishing its own run. Without one, any non-terminal
        job is finished (cancel), or with only_if_lease_expired just a PROCESSING job whose
        holder stopped renewing (the reaper's worker_lost); then it keeps the output its run had
        streamed so far, since its worker will never report it.

        A run's failure that the function's retry policy covers does not finish the job: it goes
        back to PENDING for its next attempt, published to run after the policy's backoff, and
        the job returned says so (status PENDING, attempt + 1).
        """
        if worker_id is None and "stdout" not in fields:
            fields = {**fields, **self._streamed_output(job_id)}
        spilled = self._spill_outputs(job_id, fields)
        retry_in: list[float] = []

        def change(job: JobRecord) -> bool:
            retry_in.clear()
            if job["status"] in TERMINAL:
                return False
            if worker_id is not None and (job["status"] != Status.PROCESSING or job["worker_id"] != worker_id):
                return False
            if only_if_lease_expired and not (job["status"] == Status.PROCESSING
                                              and job["lease_until"] <= time.time()):
                return False
            now = time.time()
            delay = None
            if status == Status.FAILED and job["status"] == Status.PROCESSING:
                delay = delay_before_next(job["spec"].get("retries"), job.get("attempt", 1),
                                                  (fields.get("error") or {}).get("type"))
            if delay is not None:
                retry_in.append(delay)
                self._retry(job, fields, now, delay)
                return True
            if status == Status.FAILED and job["status"] == Status.PROCESSING:
                job.setdefault("attempts", []).append(_attempt(job, fields, now))
            job.update(spilled)
            job.update(status=status, finished_at=now, lease_until=None,
                       expires_at=now + self.settings.job_retention_days * 86400)
            if job.get("callback_url"):  # delivered after this write (nanogrid.jobs.callbacks)
                job["callbacks"] = [pending_callback(job["callback_url"])]
            if job["started_at"] is not None and job.get("duration_ms") is None:
                job["duration_ms"] = int((now - job["started_at"]) * 1000)
            return True

        done = self.transition(job_id, change)
        if done is not None and done.get("callbacks"):
            try:
                self.broker.send(CALLBACK_TASK, [job_id])
            except Unavailable:
                log.warning("could not queue the job's callback; it stays pending", extra={"job_id": job_id})
        if done is not None and retry_in:
            log.warning("attempt %d failed (%s); attempt %d in %g s", done["attempt"] - 1,
                        done["attempts"][-1]["error"]["type"], done["attempt"], retry_in[0], extra={"job_id": job_id})
            try:
                self.publish(job_id, retry_in[0])
            except Unavailable:  # the record is PENDING: the reaper's sweep dispatches it when due
                log.warning("could not publish the retry; the reaper will", extra={"job_id": job_id})
        return done

    @staticmethod
    def _retry(job: JobRecord, fields: dict, now: float, delay: float) -> None:
        """PROCESSING -> PENDING for the next attempt, the failed one kept in `attempts`."""
        job.setdefault("attempts", []).append(_attempt(job, fields, now))
        job.update(status=Status.PENDING, attempt=job.get("attempt", 1) + 1, retry_at=now + delay,
                   worker_id=None, started_at=None, lease_until=None, dispatch_attempts=1, engine_retries=0,
                   result=None, stdout="", stderr="", exit_code=None, error=None, truncated=False, duration_ms=None)
        for name in ("output_ref", "peak_memory_bytes", "cpu_time_ms", "ai_usage", "streamed"):
            job.pop(name, None)

    def _streamed_output(self, job_id: str) -> dict:
        try:
            job = self.table.get(job_id)
            if job["status"] != Status.PROCESSING:
                return {}
            stdout, stderr = self.events.output(tenant_of(job), job_id, int(self.settings.output_bytes.ceiling))
        except (NotFound, Unavailable):
            return {}  # nothing streamed, or Redis is away: the job ends without it
        return {"stdout": stdout, "stderr": stderr} if stdout or stderr else {}

    def _spill_outputs(self, job_id: str, fields: dict) -> dict:
        outputs = {k: fields[k] for k in OUTPUT_FIELDS if k in fields}
        encoded = json.dumps(outputs).encode()
        if len(encoded) <= self.settings.inline_output_bytes:
            return fields
        key = output_key(job_id)
        self.outputs.put(key, encoded)
        rest = {k: v for k, v in fields.items() if k not in OUTPUT_FIELDS}
        return {**rest, "output_ref": key, "result": None, "stdout": "", "stderr": ""}


def _attempt(job: JobRecord, fields: dict, now: float) -> dict:
    """A failed attempt, as the job's `attempts` keeps it."""
    started = job["started_at"]
    return {"attempt": job.get("attempt", 1), "error": fields.get("error"), "exit_code": fields.get("exit_code"),
            "started_at": started, "finished_at": now,
            "duration_ms": fields.get("duration_ms") or (int((now - started) * 1000) if started else None)}


def function_partition(tenant: str, function_id: str) -> str:
    return f"{tenant}/{function_id}"


def output_key(job_id: str) -> str:
    """Where a job's result, stdout and stderr go when they are too large for its record."""
    return f"jobs/{job_id}/output.json"


class IdempotencyConflict(Exception):
    """An Idempotency-Key sent again with a different request."""


def idempotency_record_id(tenant: str, key: str) -> str:
    """The job table's record of a tenant's Idempotency-Key (hashed: a key may be any text)."""
    return f"idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
