"""Completion callbacks: when a job that names a callback_url ends, its document is POSTed there,
signed, and tried again with a doubling wait until the receiver takes it or the attempts run out.

The job store marks the callback pending in the same write that ends the job, and publishes the
delivery task; each attempt is recorded on the job (`callbacks: [{url, attempts, status,
last_error}]`), so delivery never delays the run nor changes how it ended. A delivery task that
runs twice may POST twice: receivers should treat `X-NanoGrid-Delivery` (job id and attempt) as
idempotent.

The signature, `X-NanoGrid-Signature: t=<unix seconds>,v1=<hex>`, is HMAC-SHA256 with the tenant's
signing secret over `<t>.<body>`; a receiver recomputes it and refuses a `t` older than
REPLAY_WINDOW_S, so a recorded delivery cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

from nanogrid.callbacks import Delivery, Guard
from nanogrid.config import Settings
from nanogrid.errors import NotFound
from nanogrid.functions import tenant_of
from nanogrid.jobs.records import CALLBACK_DELIVERED, CALLBACK_FAILED, CALLBACK_PENDING, JobRecord
from nanogrid.jobs.store import JobStore
from nanogrid.keys import SigningSecrets
from nanogrid.task_names import CALLBACK_TASK

log = logging.getLogger(__name__)
REPLAY_WINDOW_S = 300
MAX_BACKOFF_S = 3600.0


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The X-NanoGrid-Signature header value for body, signed at timestamp."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, body: bytes, header: str, now: float | None = None) -> bool:
    """Whether header signs body with secret within the replay window (what a receiver does)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > REPLAY_WINDOW_S:
        return False
    return hmac.compare_digest(signature(secret, body, timestamp), header)


class Callbacks:
    def __init__(self, settings: Settings, jobs: JobStore, secrets: SigningSecrets, guard: Guard):
        self.settings, self.jobs, self.secrets, self.guard = settings, jobs, secrets, guard

    def deliver(self, job_id: str) -> float | None:
        """One attempt at each of the job's pending callbacks; seconds until the next attempt, or
        None when none is left pending."""
        try:
            job = self.jobs.get(job_id)
        except NotFound:
            return None  # removed (retention, or never made): nothing to tell
        results = {}
        for index, callback in enumerate(job.get("callbacks") or []):
            if callback["status"] == CALLBACK_PENDING:
                results[index] = self._attempt(job, callback)
        if not results:
            return None
        done = self.jobs.update_finished(job_id, lambda record: self._record(record, results))
        waiting = [c for c in (done or {}).get("callbacks", []) if c["status"] == CALLBACK_PENDING]
        if not waiting:
            return None
        attempts = max(c["attempts"] for c in waiting)
        return min(self.settings.callback_backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)

    def _attempt(self, job: JobRecord, callback: dict) -> Delivery:
        body = json.dumps(self.jobs.public(job), separators=(",", ":")).encode()
        try:
            secret = self.secrets.existing(tenant_of(job))["signing_secret"]
        except NotFound:  # the API makes it when it accepts a callback URL: only a store restored without it
            return Delivery(None, "the tenant has no signing secret; GET /callbacks/signing-secret makes one")
        attempt = callback["attempts"] + 1
        delivery = self.guard.post(callback["url"], body, {
            "X-NanoGrid-Signature": signature(secret, body, int(time.time())),
            "X-NanoGrid-Delivery": f"{job['job_id']}/{attempt}",
        })
        log.info("callback attempt %d: %s", attempt, "delivered" if delivery.delivered else delivery.error,
                 extra={"job_id": job["job_id"]})
        return delivery

    def _record(self, job: JobRecord, results: dict) -> bool:
        for index, delivery in results.items():
            callback = job["callbacks"][index]
            if callback["status"] != CALLBACK_PENDING:
                continue  # another delivery of this job recorded it first
            callback["attempts"] += 1
            callback["last_status_code"] = delivery.status_code
            callback["last_error"] = delivery.error
            if delivery.delivered:
                callback.update(status=CALLBACK_DELIVERED, delivered_at=time.time())
            elif callback["attempts"] >= self.settings.callback_max_attempts:
                callback["status"] = CALLBACK_FAILED
        return True

    def publish(self, job_id: str, countdown_s: float = 0) -> None:
        self.jobs.broker.send(CALLBACK_TASK, [job_id], countdown_s)
