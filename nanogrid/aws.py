"""boto3 clients and error translation shared by every AWS adapter (S3, DynamoDB, SQS, CloudWatch, Auto Scaling)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

from nanogrid.config import Settings
from nanogrid.errors import Unavailable

# A short connect timeout makes an unreachable endpoint fail in seconds instead of hanging a
# request; standard mode retries throttling, 5xx and dropped connections with backoff first.
CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=20,
    retries={"max_attempts": 3, "mode": "standard"},
)

# Codes that mean the service cannot serve us right now, as opposed to a problem with the
# request: throttling that outlasted the retries, and a bucket or table that is not there
# (a deployment that was never provisioned, not a missing document).
_OUTAGE_CODES = frozenset({
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "NoSuchBucket",
    "ResourceNotFoundException",
})

_clients: dict[tuple[str, str, str | None], Any] = {}
_clients_pid = os.getpid()


def client(settings: Settings, service_name: str) -> Any:
    """The boto3 client for service_name in this process, created on first use."""
    global _clients_pid
    if _clients_pid != os.getpid():
        # The API and worker fork after import: a child must not share its parent's sockets.
        _clients.clear()
        _clients_pid = os.getpid()
    # Region and endpoint are part of the key so a process that talks to two endpoints (tests,
    # ops scripts) never gets a client aimed at the other one.
    key = (service_name, settings.aws_region, settings.aws_endpoint_url)
    found = _clients.get(key)
    if found is None:
        # A private Session per client: boto3's default session is not safe for creating
        # clients from several threads at once. Losing the setdefault race only wastes a client.
        new_client = boto3.session.Session().client(
            service_name,
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=CLIENT_CONFIG,
        )
        found = _clients.setdefault(key, new_client)
    return found


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


@contextlib.contextmanager
def unavailable_on_outage(what: str) -> Iterator[None]:
    """Turn connection failures, throttling and 5xx into Unavailable; let other errors through.

    Other ClientErrors (validation, access denied) are bugs or configuration mistakes that
    must surface as they are, not as a retryable outage.
    """
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as exc:
        raise Unavailable(f"{what}: {exc}") from exc
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if _error_code(exc) in _OUTAGE_CODES or status >= 500:
            raise Unavailable(f"{what}: {exc}") from exc
        raise
