"""The S3, DynamoDB and GCS adapters against real local servers, held to the local backends' behaviour.

Behaviour tests take the `settings` fixture, parametrized over "local" (folder and SQLite under
tmp_path) and "aws" (moto server plus gcp-storage-emulator), and reach the stores through the
factories in nanogrid.storage, so both backends must answer every call the same way.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest

from nanogrid import storage
from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound, Unavailable
from nanogrid import aws
from nanogrid.storage import gcs
from nanogrid.storage.dynamodb import DynamoDBTable
from nanogrid.storage.gcs import GCSArchive
from nanogrid.storage.provision import ensure_resources
from nanogrid.storage.s3 import S3BlobStore
from support.servers import DUMMY_AWS_ENV, free_port


# Only a guard against a hang: a refused connection fails at once, and what bounds the wait is
# the adapters' retries (test_outages_are_retried_a_few_times_with_short_timeouts).
UNAVAILABLE_WITHIN_S = 30


def cloud_settings_for(moto_endpoint: str, gcs_host: str) -> Settings:
    # Fresh names per test: the servers live for the whole session.
    suffix = uuid.uuid4().hex[:12]
    return Settings(
        storage="aws",
        aws_endpoint_url=moto_endpoint,
        s3_code_bucket=f"code-{suffix}",
        s3_user_data_bucket=f"user-data-{suffix}",
        functions_table=f"functions-{suffix}",
        jobs_table=f"jobs-{suffix}",
        archive="gcs",
        gcp_bucket_name=f"archive-{suffix}",
        extra={"STORAGE_EMULATOR_HOST": gcs_host},
    )


@pytest.fixture
def cloud_settings(moto_server, gcs_emulator) -> Settings:
    settings = cloud_settings_for(moto_server, gcs_emulator)
    ensure_resources(settings)
    return settings


# The aws backend reaches the servers at run time (request.getfixturevalue): its parameter says so.
@pytest.fixture(params=["local", pytest.param("aws", marks=[pytest.mark.aws, pytest.mark.gcs])])
def settings(request, tmp_path) -> Settings:
    if request.param == "local":
        return Settings(storage="local", archive="local", data_dir=tmp_path)
    return request.getfixturevalue("cloud_settings")


@pytest.fixture
def unreachable_settings(monkeypatch) -> Settings:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    closed_port = free_port()
    return Settings(
        storage="aws",
        aws_endpoint_url=f"http://127.0.0.1:{closed_port}",
        archive="gcs",
        gcp_bucket_name="nowhere",
        extra={"STORAGE_EMULATOR_HOST": f"127.0.0.1:{closed_port}"},
    )


def archived_keys(settings: Settings) -> list[str]:
    if settings.archive == "gcs":
        return [blob.name for blob in gcs.storage_client(settings).list_blobs(settings.gcp_bucket_name)]
    root = settings.data_dir / "archive"
    return [path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()]


# Blobs


def test_blob_put_then_get_returns_the_same_bytes(settings):
    blobs = storage.code_store(settings)
    data = bytes(range(256)) * 10
    blobs.put("fn-1/v1/bundle.zip", data)
    assert blobs.get("fn-1/v1/bundle.zip") == data


def test_blob_put_overwrites(settings):
    blobs = storage.output_store(settings)
    blobs.put("job-1/output", b"first")
    blobs.put("job-1/output", b"second")
    assert blobs.get("job-1/output") == b"second"


def test_blob_get_of_a_missing_key_raises_not_found(settings):
    with pytest.raises(NotFound):
        storage.code_store(settings).get("no/such/key")


def test_blob_delete_removes_and_tolerates_a_missing_key(settings):
    blobs = storage.code_store(settings)
    blobs.put("fn-1/v1/bundle.zip", b"zip")
    blobs.delete("fn-1/v1/bundle.zip")
    with pytest.raises(NotFound):
        blobs.get("fn-1/v1/bundle.zip")
    blobs.delete("fn-1/v1/bundle.zip")


def test_code_and_output_stores_do_not_share_keys(settings):
    storage.code_store(settings).put("shared-key", b"code")
    with pytest.raises(NotFound):
        storage.output_store(settings).get("shared-key")


# Documents


def test_document_insert_then_get_returns_it_unchanged(settings):
    table = storage.function_table(settings)
    doc = {"rev": 1, "name": "résumé ✓", "limits": {"cpus": 1.5, "memory_mb": 256}, "tags": [], "ai": None, "on": True}
    table.insert("fn-1", doc)
    assert table.get("fn-1") == doc


def test_document_insert_of_an_existing_id_raises_conflict_and_keeps_the_first(settings):
    table = storage.job_table(settings)
    table.insert("job-1", {"rev": 1, "state": "queued"})
    with pytest.raises(Conflict):
        table.insert("job-1", {"rev": 1, "state": "hijacked"})
    assert table.get("job-1") == {"rev": 1, "state": "queued"}


def test_document_get_of_a_missing_id_raises_not_found(settings):
    with pytest.raises(NotFound):
        storage.job_table(settings).get("no-such-job")


def test_document_replace_at_the_current_rev_writes(settings):
    table = storage.job_table(settings)
    table.insert("job-1", {"rev": 1, "state": "queued"})
    assert table.replace("job-1", {"rev": 2, "state": "running"}, expected_rev=1) is True
    assert table.get("job-1") == {"rev": 2, "state": "running"}


def test_document_replace_at_a_stale_rev_returns_false_and_changes_nothing(settings):
    table = storage.job_table(settings)
    table.insert("job-1", {"rev": 1, "state": "queued"})
    assert table.replace("job-1", {"rev": 2, "state": "running"}, expected_rev=1)
    assert table.replace("job-1", {"rev": 2, "state": "cancelled"}, expected_rev=1) is False
    assert table.get("job-1") == {"rev": 2, "state": "running"}


def test_document_replace_of_a_missing_id_returns_false_and_creates_nothing(settings):
    table = storage.job_table(settings)
    assert table.replace("job-1", {"rev": 2, "state": "running"}, expected_rev=1) is False
    with pytest.raises(NotFound):
        table.get("job-1")


def test_document_delete_removes_and_tolerates_a_missing_id(settings):
    table = storage.function_table(settings)
    table.insert("fn-1", {"rev": 1})
    table.delete("fn-1")
    with pytest.raises(NotFound):
        table.get("fn-1")
    table.delete("fn-1")


def test_document_scan_returns_every_document_ordered_by_id(settings):
    table = storage.function_table(settings)
    assert table.scan() == []
    for doc_id in ("fn-c", "fn-a", "fn-b"):
        table.insert(doc_id, {"rev": 1, "id": doc_id})
    assert [doc["id"] for doc in table.scan()] == ["fn-a", "fn-b", "fn-c"]


def test_document_scan_returns_documents_beyond_the_first_page(settings):
    # DynamoDB stops a scan page at 1 MB (moto too), so 1.6 MB of documents takes two pages.
    table = storage.job_table(settings)
    padding = "x" * 200_000
    for number in range(8):
        table.insert(f"job-{number}", {"rev": 1, "padding": padding})
    assert len(table.scan()) == 8


def test_function_and_job_tables_are_separate(settings):
    storage.function_table(settings).insert("same-id", {"rev": 1, "kind": "function"})
    storage.job_table(settings).insert("same-id", {"rev": 1, "kind": "job"})
    assert storage.function_table(settings).get("same-id")["kind"] == "function"
    assert storage.job_table(settings).get("same-id")["kind"] == "job"


def test_dynamodb_item_layout_is_key_rev_and_json_doc(cloud_settings):
    DynamoDBTable(cloud_settings, cloud_settings.functions_table, "functionId").insert("fn-1", {"rev": 3, "name": "f"})
    raw = aws.client(cloud_settings, "dynamodb").get_item(
        TableName=cloud_settings.functions_table, Key={"functionId": {"S": "fn-1"}}
    )["Item"]
    assert raw == {"functionId": {"S": "fn-1"}, "rev": {"N": "3"}, "doc": {"S": '{"rev": 3, "name": "f"}'}}


# Archive


def test_archive_stores_a_key_once(settings):
    archive = storage.archive(settings)
    assert archive.store_once("fn-1/v1.zip", b"first") is True
    assert archive.store_once("fn-1/v1.zip", b"second") is False
    assert archived_keys(settings) == ["fn-1/v1.zip"]


def test_archive_keeps_the_first_content(cloud_settings):
    archive = GCSArchive(cloud_settings)
    archive.store_once("fn-1/v1.zip", b"first")
    archive.store_once("fn-1/v1.zip", b"second")
    bucket = gcs.storage_client(cloud_settings).bucket(cloud_settings.gcp_bucket_name)
    assert bucket.blob("fn-1/v1.zip").download_as_bytes() == b"first"


def test_archive_stores_different_keys(settings):
    archive = storage.archive(settings)
    assert archive.store_once("fn-1/v1.zip", b"one") is True
    assert archive.store_once("fn-1/v2.zip", b"two") is True
    assert sorted(archived_keys(settings)) == ["fn-1/v1.zip", "fn-1/v2.zip"]


# Provisioning


def test_ensure_resources_is_idempotent_and_keeps_data(cloud_settings):
    S3BlobStore(cloud_settings, cloud_settings.s3_user_data_bucket).put("kept", b"data")
    ensure_resources(cloud_settings)
    ensure_resources(cloud_settings)

    s3 = aws.client(cloud_settings, "s3")
    assert S3BlobStore(cloud_settings, cloud_settings.s3_user_data_bucket).get("kept") == b"data"
    assert s3.get_bucket_versioning(Bucket=cloud_settings.s3_user_data_bucket)["Status"] == "Enabled"
    s3.head_bucket(Bucket=cloud_settings.s3_code_bucket)

    dynamodb = aws.client(cloud_settings, "dynamodb")
    for table, key, indexes in ((cloud_settings.functions_table, "functionId", []),
                                (cloud_settings.jobs_table, "jobId", list(storage.TABLES["jobs"].indexes))):
        description = dynamodb.describe_table(TableName=table)["Table"]
        assert description["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
        index_keys = [f"{index}_{part}" for index in indexes for part in ("pk", "sk")]
        assert sorted(a["AttributeName"] for a in description["AttributeDefinitions"]) == sorted([key, *index_keys])
        assert sorted(i["IndexName"] for i in description.get("GlobalSecondaryIndexes", [])) == sorted(indexes)
        assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    assert gcs.storage_client(cloud_settings).lookup_bucket(cloud_settings.gcp_bucket_name) is not None


def test_ensure_resources_creates_everything_on_fresh_servers(moto_server, gcs_emulator):
    settings = cloud_settings_for(moto_server, gcs_emulator)
    ensure_resources(settings)
    storage.output_store(settings).put("k", b"v")
    storage.job_table(settings).insert("job-1", {"rev": 1})
    assert storage.archive(settings).store_once("k", b"v") is True


def test_ensure_resources_with_local_backends_calls_no_service(unreachable_settings):
    ensure_resources(unreachable_settings.replace(storage="local", archive="local"))


# Outages


UNREACHABLE_OPERATIONS = {
    "s3 put": lambda s: S3BlobStore(s, "bucket").put("k", b"v"),
    "s3 get": lambda s: S3BlobStore(s, "bucket").get("k"),
    "s3 delete": lambda s: S3BlobStore(s, "bucket").delete("k"),
    "dynamodb insert": lambda s: DynamoDBTable(s, "table", "jobId").insert("j", {"rev": 1}),
    "dynamodb get": lambda s: DynamoDBTable(s, "table", "jobId").get("j"),
    "dynamodb replace": lambda s: DynamoDBTable(s, "table", "jobId").replace("j", {"rev": 2}, 1),
    "dynamodb delete": lambda s: DynamoDBTable(s, "table", "jobId").delete("j"),
    "dynamodb scan": lambda s: DynamoDBTable(s, "table", "jobId").scan(),
    "gcs store_once": lambda s: GCSArchive(s).store_once("k", b"v"),
    "ensure_resources": ensure_resources,
    "ensure_resources gcs": lambda s: ensure_resources(s.replace(storage="local")),
}


@pytest.mark.parametrize("operation", UNREACHABLE_OPERATIONS.values(), ids=UNREACHABLE_OPERATIONS.keys())
def test_a_closed_endpoint_raises_unavailable_quickly(unreachable_settings, operation):
    started = time.monotonic()
    with pytest.raises(Unavailable):
        operation(unreachable_settings)
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S


def test_outages_are_retried_a_few_times_with_short_timeouts(unreachable_settings):
    for service in ("s3", "dynamodb"):
        config = aws.client(unreachable_settings, service).meta.config
        # Standard mode's backoff, three retries after the first attempt (botocore counts it in).
        assert config.retries == {"mode": "standard", "total_max_attempts": 4}, config.retries
        assert config.connect_timeout == 2
    assert (gcs.ATTEMPTS, gcs.REQUEST_TIMEOUT[0]) == (3, 2)  # the archive's own loop: attempts, connect timeout


def test_a_missing_bucket_or_table_is_unavailable_not_not_found(cloud_settings):
    with pytest.raises(Unavailable):
        S3BlobStore(cloud_settings, "no-such-bucket-" + uuid.uuid4().hex[:8]).get("k")
    with pytest.raises(Unavailable):
        DynamoDBTable(cloud_settings, "NoSuchTable", "jobId").get("j")
    with pytest.raises(Unavailable):
        GCSArchive(cloud_settings.replace(gcp_bucket_name="no-such-bucket")).store_once("k", b"v")


# Clients


def _client_is_inherited(settings: Settings, parent_client, answer) -> None:
    answer.put(aws.client(settings, "s3") is parent_client)


def test_clients_are_cached_per_process_service_and_endpoint(cloud_settings):
    s3 = aws.client(cloud_settings, "s3")
    assert aws.client(cloud_settings, "s3") is s3
    assert aws.client(cloud_settings, "dynamodb") is not s3
    assert aws.client(cloud_settings.replace(aws_endpoint_url="http://127.0.0.1:1"), "s3") is not s3

    fork = multiprocessing.get_context("fork")
    answer = fork.Queue()
    child = fork.Process(target=_client_is_inherited, args=(cloud_settings, s3, answer))
    child.start()
    child.join(timeout=30)
    assert answer.get(timeout=5) is False, "a forked child must build its own client"


# --- Secondary indexes ------------------------------------------------------------------------------

def test_an_index_holds_only_the_documents_given_an_entry_in_sort_order(settings):
    from nanogrid.storage import IndexEntry

    table = storage.job_table(settings)
    for n in range(7):
        table.insert(f"job-{n}", {"rev": 1, "n": n}, {"due": IndexEntry("PENDING", 100 + n)})
    table.insert("job-done", {"rev": 1, "n": 99}, {"due": None})
    pages, cursor = [], None
    while True:
        page = table.query("due", "PENDING", limit=3, cursor=cursor)
        pages.append([doc["n"] for doc in page.docs])
        if page.cursor is None:
            break
        cursor = page.cursor
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]  # in order, no repeat, no gap, the sparse one absent
    assert [d["n"] for d in table.query("due", "PENDING", until=102).docs] == [0, 1, 2]
    assert [d["n"] for d in table.query("due", "PENDING", newest_first=True, limit=2).docs] == [6, 5]


def test_a_write_moves_the_document_in_its_index_and_a_failed_one_does_not(settings):
    from nanogrid.storage import IndexEntry

    table = storage.job_table(settings)
    table.insert("job-a", {"rev": 1, "n": 1}, {"due": IndexEntry("PENDING", 10)})
    assert table.replace("job-a", {"rev": 2, "n": 1}, 1, {"due": IndexEntry("PROCESSING", 20)})
    assert [d["rev"] for d in table.query("due", "PROCESSING").docs] == [2]
    assert table.query("due", "PENDING").docs == []
    assert not table.replace("job-a", {"rev": 3, "n": 1}, 1, {"due": None})  # a stale rev changes nothing
    assert [d["rev"] for d in table.query("due", "PROCESSING").docs] == [2]
    assert table.replace("job-a", {"rev": 3, "n": 1}, 2, {"due": None})
    assert table.query("due", "PROCESSING").docs == []
    table.insert("job-b", {"rev": 1}, {"due": IndexEntry("PENDING", 5)})
    table.delete("job-b")
    assert table.query("due", "PENDING").docs == []


def test_an_index_the_table_does_not_have_is_refused(settings):
    from nanogrid.storage import IndexEntry

    with pytest.raises(ValueError, match="no index"):
        storage.function_table(settings).insert("f", {"rev": 1}, {"due": IndexEntry("x", 1)})
