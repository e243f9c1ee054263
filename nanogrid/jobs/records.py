"""The job record: its fields, its states and the error types a run can end with.

A job document is stored as JSON (DynamoDB or SQLite) and handled as a dict; `JobRecord` names
its fields and their types. `Status` and `ErrorType` are string enums, so a stored "FAILED"
compares equal to Status.FAILED and an enum member is written as its plain string.

States: PENDING -> PROCESSING -> SUCCESS | FAILED (and PENDING -> FAILED for cancels,
dispatch failures and redispatch exhaustion). A failure the function's retry policy covers
(nanogrid.jobs.retries) goes PROCESSING -> PENDING instead, with `attempt` counting on and the
failed attempt kept in `attempts`.
"""

from __future__ import annotations

import enum
import time
import uuid
from typing import Any, TypedDict


class Status(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


TERMINAL = frozenset({Status.SUCCESS, Status.FAILED})


class ErrorType(enum.StrEnum):
    """Why a run ended FAILED (the job's error.type)."""

    # The function, in its sandbox
    RUNTIME_ERROR = "runtime_error"  # an exception, a non-zero exit, a signal
    INVALID_RESULT = "invalid_result"  # the handler's return value is not a JSON value
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    FILE_LIMIT = "file_limit"
    AI_UNAVAILABLE = "ai_unavailable"  # the function let nanogrid_ai.AIUnavailable escape
    INIT_ERROR = "init_error"  # importing main.py failed (an exception, SystemExit) or took over init_timeout_s
    # The platform
    SANDBOX_ERROR = "sandbox_error"  # the sandbox could not be made, or ended without reporting the run
    CODE_UNAVAILABLE = "code_unavailable"  # the code store did not answer, or the function was deleted
    WORKER_LOST = "worker_lost"  # the worker running it stopped renewing its lease
    NOT_STARTED = "not_started"  # no worker took it within NANOGRID_PENDING_TIMEOUT_S
    ENQUEUE_FAILED = "enqueue_failed"  # the broker refused the message
    OUTPUT_LOST = "output_lost"  # the stored output is gone (the job's output_ref)
    SECRET_UNAVAILABLE = "secret_unavailable"  # a secret the function lists is gone, or the store did not answer
    BUILD_FAILED = "build_failed"  # the function's requirements could not be installed (its layer's build)
    # Somebody
    CANCELLED = "cancelled"


class JobRecord(TypedDict, total=False):
    """The stored job document. Times are epoch seconds; the API shows them as ISO 8601."""

    job_id: str
    rev: int  # compare-and-set revision (nanogrid.storage.DocumentTable)
    tenant: str
    function_id: str
    function_version: int
    status: Status
    input: Any
    spec: dict  # what the run needs from the function at this version: handler, limits, env
    result: Any
    stdout: str
    stderr: str
    exit_code: int | None
    error: dict | None  # {"type": ErrorType, "message": str, "signal"?: int}
    truncated: bool
    duration_ms: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    dispatch_attempts: int
    engine_retries: int  # times the run went back to the queue because the sandbox engine refused it
    worker_id: str | None  # the lease holder (host:pid)
    lease_until: float | None
    output_ref: str  # where result/stdout/stderr went when they were too large to inline
    ai_usage: dict | None
    streamed: bool  # a streaming handler's run: result is the list of the items it yielded
    expires_at: float  # a finished job's record is removed after this (NANOGRID_JOB_RETENTION_DAYS)
    peak_memory_bytes: int | None
    cpu_time_ms: int | None
    attempt: int  # from 1; a retried run is the same job, attempted again
    attempts: list[dict]  # every attempt that failed (a retried one, and a final failure): error, times
    retry_at: float | None  # a retried run is not dispatched before this
    callback_url: str | None  # where the job document is POSTed when the job ends (nanogrid.jobs.callbacks)
    callbacks: list[dict]  # each callback's delivery: url, attempts, status, last_error, last_status_code
    trigger: dict | None  # what started the run when no request did: {"schedule_id", "tick"}


# What GET /jobs/<id> shows of a record, in this order.
PUBLIC_FIELDS = (
    "job_id", "function_id", "function_version", "status", "result", "stdout", "stderr", "exit_code",
    "error", "truncated", "duration_ms", "created_at", "started_at", "finished_at", "ai_usage",
    "peak_memory_bytes", "cpu_time_ms", "attempt", "attempts", "callback_url", "callbacks",
    "trigger", "alias",
)
CALLBACK_PENDING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "delivered", "failed"
OUTPUT_FIELDS = ("result", "stdout", "stderr")


def error(error_type: ErrorType, message: str, **details) -> dict:
    """A job's error field."""
    return {"type": error_type, "message": message, **details}


def pending_callback(url: str) -> dict:
    """A job's callback before its first attempt."""
    return {"url": url, "attempts": 0, "status": CALLBACK_PENDING, "last_error": None, "last_status_code": None}


def is_job_id(value: str) -> bool:
    try:
        return uuid.UUID(value).hex == value.replace("-", "") and len(value) == 36
    except ValueError:
        return False


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
