"""Celery tasks. Names are stable strings so queued messages survive code moves."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from nanogrid.errors import NotFound, Unavailable
from nanogrid.functions import archive_key, code_key, tenant_of
from nanogrid.jobs import Status
from nanogrid.keys import DEFAULT_TENANT
from nanogrid.services import current as services
from nanogrid.task_names import ARCHIVE_TASK, BUILD_TASK, CALLBACK_TASK, RUN_TASK
from nanogrid.worker import build, execute

log = logging.getLogger(__name__)


# When this process last queued each version's archive task: once is enough (store_once is
# idempotent), but after ARCHIVE_RESEND_S a success queues it again, in case that one failed.
_archive_queued: dict[tuple, float] = {}
ARCHIVE_RESEND_S = 600


class RunFailed(Exception):
    """The run ended FAILED: the task fails too, so Flower and `celery inspect` show it as failed,
    with the job and the error type; an expected failure, logged without a traceback."""


# ignore_result: the job record is the result; Celery's result backend would only cost a write
# per run here and a subscription per run in the API.
@shared_task(name=RUN_TASK, bind=True, ignore_result=True, throws=(RunFailed,))
def run_job(self, job_id: str) -> str:
    job: dict = {}
    status = execute.run(services(), job_id, finished=job.update)
    if status == Status.FAILED:
        error = (job.get("error") or {}).get("type")
        raise RunFailed(f"job {job_id} FAILED: {error}")
    if status == Status.SUCCESS and services().archive is not None:
        version = (tenant_of(job), job["function_id"], job["function_version"])
        if time.monotonic() - _archive_queued.get(version, -ARCHIVE_RESEND_S) >= ARCHIVE_RESEND_S:
            try:
                self.app.send_task(ARCHIVE_TASK, args=[job["function_id"], job["function_version"], tenant_of(job)],
                                   ignore_result=True)
                _archive_queued[version] = time.monotonic()
            except Exception:  # noqa: BLE001 - archiving must never fail the run; the next success retries it
                log.exception("could not queue the archive task", extra={"job_id": job_id})
    return status


@shared_task(name=CALLBACK_TASK, autoretry_for=(Unavailable,), retry_backoff=2, retry_backoff_max=300,
             max_retries=8, ignore_result=True)
def deliver_callback(job_id: str) -> None:
    """One attempt at a finished job's callbacks; the next attempt, if one is due, is queued with
    its wait (nanogrid.jobs.callbacks)."""
    svc = services()
    delay = svc.callbacks.deliver(job_id)
    if delay is not None:
        svc.callbacks.publish(job_id, delay)


@shared_task(name=ARCHIVE_TASK, autoretry_for=(Unavailable,), retry_backoff=2, retry_backoff_max=300, max_retries=8,
             ignore_result=True)
def archive_code(function_id: str, version: int, tenant: str = DEFAULT_TENANT) -> bool:
    """Copy a code version that ran successfully to the archive, once (store_once is idempotent)."""
    svc = services()
    try:
        data = svc.functions.code.get(code_key(tenant, function_id, version))
    except NotFound:
        log.info("function deleted before its code was archived", extra={"function_id": function_id})
        return False
    return svc.archive.store_once(archive_key(tenant, function_id, version), data)


@shared_task(name=BUILD_TASK, autoretry_for=(Unavailable,), retry_backoff=2, retry_backoff_max=60, max_retries=5,
             ignore_result=True)
def build_layer(sha: str) -> str:
    """Build a layer (sent to the builds queue, taken by `nanogrid builder`: never a run's slot)."""
    return build.build(services(), sha)
