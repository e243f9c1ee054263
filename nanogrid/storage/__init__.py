"""Storage interfaces and the factories that pick a backend from Settings.

Every backend keeps whole documents (dicts of JSON values) and versions them with an integer
`rev`, so conditional transitions are compare-and-set in one place (nanogrid.jobs) instead of
one query language per backend.
"""

from __future__ import annotations

from typing import Protocol

from nanogrid.config import Settings


class BlobStore(Protocol):
    """Bytes by key: uploaded code bundles and large run outputs."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...  # raises NotFound

    def delete(self, key: str) -> None: ...


class Archive(Protocol):
    """Write-once store for code versions that ran successfully."""

    def store_once(self, key: str, data: bytes) -> bool:
        """Store data under key unless the key exists; True when this call wrote it."""
        ...


class DocumentTable(Protocol):
    """Documents by id with compare-and-set on their `rev`.

    `insert` fails with Conflict when the id exists; `replace` writes only when the stored rev
    equals expected_rev and returns whether it did; `scan` yields every document.
    """

    def insert(self, doc_id: str, doc: dict) -> None: ...

    def get(self, doc_id: str) -> dict: ...  # raises NotFound

    def replace(self, doc_id: str, doc: dict, expected_rev: int) -> bool: ...

    def delete(self, doc_id: str) -> None: ...

    def scan(self) -> list[dict]: ...


def code_store(settings: Settings) -> BlobStore:
    if settings.storage == "aws":
        from nanogrid.storage.s3 import S3BlobStore

        return S3BlobStore(settings, settings.s3_code_bucket)
    from nanogrid.storage.local import LocalBlobStore

    return LocalBlobStore(settings.data_dir / "code")


def output_store(settings: Settings) -> BlobStore:
    if settings.storage == "aws":
        from nanogrid.storage.s3 import S3BlobStore

        return S3BlobStore(settings, settings.s3_user_data_bucket)
    from nanogrid.storage.local import LocalBlobStore

    return LocalBlobStore(settings.data_dir / "outputs")


def function_table(settings: Settings) -> DocumentTable:
    return _table(settings, settings.functions_table, "functionId", "functions")


def job_table(settings: Settings) -> DocumentTable:
    return _table(settings, settings.jobs_table, "jobId", "jobs")


def key_table(settings: Settings) -> DocumentTable:
    """API keys (nanogrid.keys): one document per key id, the secret stored only as a hash."""
    return _table(settings, settings.keys_table, "keyId", "api_keys")


def _table(settings: Settings, dynamodb_name: str, key: str, sqlite_name: str) -> DocumentTable:
    if settings.storage == "aws":
        from nanogrid.storage.dynamodb import DynamoDBTable

        return DynamoDBTable(settings, dynamodb_name, key)
    from nanogrid.storage.local import SQLiteTable

    return SQLiteTable(settings.data_dir / "nanogrid.sqlite3", sqlite_name)


def archive(settings: Settings) -> Archive | None:
    if settings.archive == "gcs":
        from nanogrid.storage.gcs import GCSArchive

        return GCSArchive(settings)
    if settings.archive == "local":
        from nanogrid.storage.local import LocalArchive

        return LocalArchive(settings.data_dir / "archive")
    return None
