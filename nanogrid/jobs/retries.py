"""A function's retry policy: which failures run the job again, how often, and after how long.

`{"max": 0-5, "on": [error types], "backoff_s": seconds}`: a run that ends FAILED with a type in
`on` runs again as the same job while fewer than `max` retries were made, after
`backoff_s * 2 ** (retry - 1)` seconds. Only failures that another attempt may not meet again can
be retried; a cancel, a deleted function or an input the job store refused never are.
"""

from __future__ import annotations

from nanogrid.jobs.records import ErrorType

MAX_RETRIES = 5
MAX_BACKOFF_S = 300.0
DEFAULT_BACKOFF_S = 1.0
RETRYABLE = (ErrorType.RUNTIME_ERROR, ErrorType.TIMEOUT, ErrorType.MEMORY_LIMIT, ErrorType.AI_UNAVAILABLE,
             ErrorType.SANDBOX_ERROR, ErrorType.WORKER_LOST)
FIELDS = ("max", "on", "backoff_s")


class RetryPolicyError(ValueError):
    """A retry policy the API refuses; the message says why."""


def check(value) -> dict | None:
    """The policy as stored (defaults filled in), None for no retries; RetryPolicyError if malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RetryPolicyError('retries must be an object: {"max": 0-5, "on": [error types], "backoff_s": seconds}')
    unknown = set(value) - set(FIELDS)
    if unknown:
        raise RetryPolicyError(f"unknown retries field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(FIELDS)}")
    most = value.get("max")
    if isinstance(most, float) and most.is_integer():  # JSON's 2.0 is the integer 2
        most = int(most)
    if isinstance(most, bool) or not isinstance(most, int) or not 0 <= most <= MAX_RETRIES:
        raise RetryPolicyError(f"retries.max must be an integer from 0 to {MAX_RETRIES}")
    on = value.get("on", list(RETRYABLE))
    if not isinstance(on, list) or not on or not all(isinstance(kind, str) for kind in on):
        raise RetryPolicyError("retries.on must be a non-empty list of error types")
    refused = [kind for kind in on if kind not in RETRYABLE]
    if refused:
        raise RetryPolicyError(f"retries.on cannot name {', '.join(refused)}; retryable error types: "
                               f"{', '.join(RETRYABLE)}")
    backoff_s = value.get("backoff_s", DEFAULT_BACKOFF_S)
    if isinstance(backoff_s, bool) or not isinstance(backoff_s, (int, float)) or not 0 <= backoff_s <= MAX_BACKOFF_S:
        raise RetryPolicyError(f"retries.backoff_s must be a number of seconds from 0 to {MAX_BACKOFF_S:g}")
    if most == 0:
        return None
    return {"max": most, "on": sorted(set(on), key=list(RETRYABLE).index), "backoff_s": backoff_s}


def delay_before_next(policy: dict | None, attempt: int, error_type: str | None) -> float | None:
    """Seconds to wait before attempt + 1 of a run whose attempt `attempt` failed with error_type,
    or None when the failure is final."""
    if not policy or error_type not in policy["on"] or attempt > policy["max"]:
        return None
    return policy["backoff_s"] * 2 ** (attempt - 1)
