"""Write-once archive of successful code versions in a Google Cloud Storage bucket."""

from __future__ import annotations

import os
import time

import requests
from google.api_core import exceptions as google_errors
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import TransportError
from google.cloud import storage

from nanogrid.config import Settings
from nanogrid.errors import Unavailable

ATTEMPTS = 3
FIRST_BACKOFF_S = 0.5
# (connect, read), as for the boto3 clients: an unreachable endpoint fails in seconds, a slow
# upload of a large bundle does not.
REQUEST_TIMEOUT = (2, 20)

# The emulator checks no credentials; a fixed project id lets create_bucket work without one.
EMULATOR_PROJECT = "nanogrid-local"

_TRANSIENT_ERRORS = (
    google_errors.TooManyRequests,
    google_errors.InternalServerError,
    google_errors.BadGateway,
    google_errors.ServiceUnavailable,
    google_errors.GatewayTimeout,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    TransportError,
    ConnectionError,
)


def storage_client(settings: Settings) -> storage.Client:
    """A client for the emulator when STORAGE_EMULATOR_HOST is set, else for real GCS."""
    emulator_host = settings.extra.get("STORAGE_EMULATOR_HOST")
    if emulator_host:
        endpoint = emulator_host if "://" in emulator_host else f"http://{emulator_host}"
        return storage.Client(
            project=EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    # Application default credentials: GOOGLE_APPLICATION_CREDENTIALS or the metadata server.
    return storage.Client()


def create_bucket_if_missing(settings: Settings) -> None:
    try:
        # retry=None: the library's default retries for two minutes; provisioning should fail fast.
        storage_client(settings).create_bucket(settings.gcp_bucket_name, timeout=REQUEST_TIMEOUT, retry=None)
    except google_errors.Conflict:
        pass
    except _TRANSIENT_ERRORS as exc:
        raise Unavailable(f"GCS create bucket {settings.gcp_bucket_name}: {exc}") from exc


class GCSArchive:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.bucket_name = settings.gcp_bucket_name
        self._client: storage.Client | None = None
        self._client_pid = 0

    def _bucket(self) -> storage.Bucket:
        # Created on first use, and again after a fork: the client's HTTP session holds sockets.
        if self._client is None or self._client_pid != os.getpid():
            self._client = storage_client(self.settings)
            self._client_pid = os.getpid()
        return self._client.bucket(self.bucket_name)

    def store_once(self, key: str, data: bytes) -> bool:
        """Upload data under key unless it exists; True when this call created the object.

        A retry after an upload whose response was lost finds the object and returns False:
        the object exists either way, which is what callers rely on.
        """
        where = f"GCS archive gs://{self.bucket_name}/{key}"
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._store_once_attempt(key, data)
            except google_errors.NotFound as exc:
                # get_blob answers a missing object with None, so a 404 is the bucket itself.
                raise Unavailable(f"{where}: the bucket does not exist") from exc
            except _TRANSIENT_ERRORS as exc:
                if attempt == ATTEMPTS:
                    raise Unavailable(f"{where}: {exc}") from exc
                time.sleep(FIRST_BACKOFF_S * 2 ** (attempt - 1))

    def _store_once_attempt(self, key: str, data: bytes) -> bool:
        bucket = self._bucket()
        # gcp-storage-emulator ignores ifGenerationMatch (checked with 2026.7.19: a second upload
        # with if_generation_match=0 overwrites), so look first. On real GCS this also saves
        # re-uploading a version that is already archived; the precondition below stays the
        # guard against two writers racing past this check.
        if bucket.get_blob(key, timeout=REQUEST_TIMEOUT, retry=None) is not None:
            return False
        try:
            # retry=None: this loop does the retrying, with a bound that suits a request handler.
            bucket.blob(key).upload_from_string(data, if_generation_match=0, timeout=REQUEST_TIMEOUT, retry=None)
        except google_errors.PreconditionFailed:
            return False
        return True

