"""Celery tasks. Names are stable strings so queued messages survive code moves."""

from __future__ import annotations

import functools
import logging

from celery import shared_task

from nanogrid.config import Settings
from nanogrid.errors import NotFound, Unavailable
from nanogrid.functions import archive_key, code_key, tenant_of
from nanogrid.jobs import SUCCESS
from nanogrid.keys import DEFAULT_TENANT
from nanogrid.services import Services
from nanogrid.worker import execute
from nanogrid.worker.celery_app import ARCHIVE_TASK, RUN_TASK

log = logging.getLogger(__name__)


@functools.cache
def services() -> Services:
    return Services(Settings.from_env())


@shared_task(name=RUN_TASK, bind=True)
def run_job(self, job_id: str) -> str:
    status = execute.run(services(), job_id)
    if status == SUCCESS and services().archive is not None:
        job = services().jobs.get(job_id)
        try:
            self.app.send_task(ARCHIVE_TASK, args=[job["function_id"], job["function_version"], tenant_of(job)])
        except Exception:  # noqa: BLE001 - archiving must never fail the run; the next success retries it
            log.exception("could not queue the archive task", extra={"job_id": job_id})
    return status


@shared_task(name=ARCHIVE_TASK, autoretry_for=(Unavailable,), retry_backoff=2, retry_backoff_max=300, max_retries=8)
def archive_code(function_id: str, version: int, tenant: str = DEFAULT_TENANT) -> bool:
    """Copy a code version that ran successfully to the archive, once (store_once is idempotent)."""
    svc = services()
    try:
        data = svc.functions.code.get(code_key(tenant, function_id, version))
    except NotFound:
        log.info("function deleted before its code was archived", extra={"function_id": function_id})
        return False
    return svc.archive.store_once(archive_key(tenant, function_id, version), data)
