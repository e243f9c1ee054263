"""Storage interfaces and the factories that pick a backend from Settings.

Every backend keeps whole documents (dicts of JSON values) and versions them with an integer
`rev`, so conditional transitions are compare-and-set in one place (nanogrid.jobs) instead of
one query language per backend.

A table may have secondary indexes, declared by name below (TABLES): the writer of a document
gives its entry in each index, a partition value and a sort value (`IndexEntry`), or None to
leave it out (a sparse index: only the documents that need finding are in it). `query` reads one
partition in sort order, in pages. DynamoDB keeps each as a global secondary index, SQLite as an
indexed side table; both are written with the document itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Protocol

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


class IndexEntry(NamedTuple):
    """Where a document stands in one index: its partition, and its place within it."""

    partition: str
    sort: float  # a time, in practice: 0 or more


# A document's entries, by index name; an index left out (or None) does not hold the document.
Entries = Mapping[str, IndexEntry | None]


class Page(NamedTuple):
    docs: list[dict]
    cursor: str | None  # give it back to read the next page; None: this was the last


UNTIL_SUFFIX = "\uffff"  # after every id: sort_key(t, UNTIL_SUFFIX) is past every entry sorted at t


def sort_key(sort: float, doc_id: str) -> str:
    """The stored order within a partition: by sort value, then by id (ties broken, so a page
    boundary never repeats or skips a document). Fixed width, so text order is number order."""
    return f"{max(sort, 0.0):020.6f}|{doc_id}"


def cursor_after(sort: float, doc_id: str) -> str:
    """The cursor that continues a query after this document (what a page's cursor is)."""
    return sort_key(sort, doc_id)


class DocumentTable(Protocol):
    """Documents by id with compare-and-set on their `rev`.

    `insert` fails with Conflict when the id exists; `replace` writes only when the stored rev
    equals expected_rev and returns whether it did; `scan` yields every document. `entries` give
    the document's place in the table's indexes (see IndexEntry); `query` reads an index.
    """

    def insert(self, doc_id: str, doc: dict, entries: Entries | None = None) -> None: ...

    def get(self, doc_id: str) -> dict: ...  # raises NotFound

    def replace(self, doc_id: str, doc: dict, expected_rev: int, entries: Entries | None = None) -> bool: ...

    def delete(self, doc_id: str) -> None: ...

    def scan(self) -> list[dict]: ...

    def query(self, index: str, partition: str, *, since: float | None = None, until: float | None = None,
              newest_first: bool = False, limit: int = 100, cursor: str | None = None) -> Page:
        """Documents of one partition in sort order, with sort values from `since` to `until`
        (inclusive) when given; a page's cursor continues after its last document."""
        ...

    def expire(self, now: float) -> list[str]:
        """Delete the documents whose `expires_at` has passed; their ids. DynamoDB does this itself
        (the table's TTL on `expires_at`), so there it deletes nothing and returns []."""
        ...


@dataclass(frozen=True)
class TableSpec:
    key: str  # the DynamoDB hash key attribute
    sqlite_name: str
    indexes: tuple[str, ...] = ()
    expires: bool = False  # documents carry `expires_at` (epoch s): DynamoDB's TTL attribute, SQLite's sweep


TABLES = {
    "functions": TableSpec("functionId", "functions"),
    # jobs: `due` holds the unfinished jobs by status, ordered by when to look at them again (the
    # reaper's sweep: PENDING by redispatch time, PROCESSING by lease expiry).
    # tenant_jobs and function_jobs: a tenant's jobs, and one function's, by creation time (history).
    "jobs": TableSpec("jobId", "jobs", indexes=("due", "tenant_jobs", "function_jobs"), expires=True),
    "keys": TableSpec("keyId", "api_keys"),
}


class SecretStore(Protocol):
    """A tenant's named secrets (nanogrid/storage/secrets.py): values in, values out to workers only."""

    def put(self, tenant: str, name: str, value: str) -> dict: ...  # its metadata: name, created_at, updated_at

    def get(self, tenant: str, name: str) -> str: ...  # raises NotFound

    def metadata(self, tenant: str, name: str) -> dict: ...  # raises NotFound

    def list(self, tenant: str) -> list[dict]: ...

    def delete(self, tenant: str, name: str) -> None: ...  # raises NotFound


def secret_store(settings: Settings) -> SecretStore:
    if settings.storage == "aws":
        from nanogrid.storage.secretsmanager import SecretsManagerStore

        return SecretsManagerStore(settings)
    from nanogrid.storage.secrets import LocalSecretStore

    return LocalSecretStore(settings, function_table(settings))


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
    return _table(settings, settings.functions_table, TABLES["functions"])


def job_table(settings: Settings) -> DocumentTable:
    return _table(settings, settings.jobs_table, TABLES["jobs"])


def key_table(settings: Settings) -> DocumentTable:
    """API keys (nanogrid.keys): one document per key id, the secret stored only as a hash."""
    return _table(settings, settings.keys_table, TABLES["keys"])


def dynamodb_tables(settings: Settings) -> dict[str, TableSpec]:
    """The DynamoDB table names of this installation and their specs (for provisioning)."""
    return {settings.functions_table: TABLES["functions"], settings.jobs_table: TABLES["jobs"],
            settings.keys_table: TABLES["keys"]}


def _table(settings: Settings, dynamodb_name: str, spec: TableSpec) -> DocumentTable:
    if settings.storage == "aws":
        from nanogrid.storage.dynamodb import DynamoDBTable

        return DynamoDBTable(settings, dynamodb_name, spec.key, spec.indexes, spec.expires)
    from nanogrid.storage.local import SQLiteTable

    return SQLiteTable(settings.data_dir / "nanogrid.sqlite3", spec.sqlite_name, spec.indexes, spec.expires)


def archive(settings: Settings) -> Archive | None:
    if settings.archive == "gcs":
        from nanogrid.storage.gcs import GCSArchive

        return GCSArchive(settings)
    if settings.archive == "local":
        from nanogrid.storage.local import LocalArchive

        return LocalArchive(settings.data_dir / "archive")
    return None
