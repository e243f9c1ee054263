"""Behaviour only the embedded backends have: paths on disk, SQLite connections, O_EXCL.

The behaviour they share with S3, DynamoDB and GCS is tested against both in
tests/integration/test_aws_storage.py (its "local" cases need no servers).
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from nanogrid.errors import Unavailable
from nanogrid.storage.local import LocalArchive, LocalBlobStore, SQLiteTable


def test_blob_keys_may_not_escape_the_store(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    for key in ("../outside", "a/../../outside", "/etc/passwd"):
        with pytest.raises(ValueError):
            blobs.put(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_blob_put_leaves_no_temporary_files(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    blobs.put("fn/bundle.zip", b"one")
    blobs.put("fn/bundle.zip", b"two")
    assert [p.name for p in (tmp_path / "fn").iterdir()] == ["bundle.zip"]


def test_archive_lets_exactly_one_concurrent_writer_win(tmp_path):
    archive = LocalArchive(tmp_path)
    start = threading.Barrier(8)
    results = []

    def store(number: int) -> None:
        start.wait()
        results.append(archive.store_once("fn/v1.zip", f"writer {number}".encode()))

    writers = [threading.Thread(target=store, args=(n,)) for n in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert sorted(results) == [False] * 7 + [True]


def test_tables_in_one_file_share_data_across_instances(tmp_path):
    path = tmp_path / "nanogrid.sqlite3"
    SQLiteTable(path, "jobs").insert("job-1", {"rev": 1})
    assert SQLiteTable(path, "jobs").get("job-1") == {"rev": 1}


def test_table_names_must_be_identifiers(tmp_path):
    with pytest.raises(ValueError):
        SQLiteTable(tmp_path / "db", "jobs; DROP TABLE functions")


def _insert_in_child(table: SQLiteTable) -> None:
    table.insert("from-child", {"rev": 1})


def test_a_table_opened_before_fork_works_in_the_child(tmp_path):
    table = SQLiteTable(tmp_path / "nanogrid.sqlite3", "jobs")
    table.insert("from-parent", {"rev": 1})
    child = multiprocessing.get_context("fork").Process(target=_insert_in_child, args=(table,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert [doc["rev"] for doc in table.scan()] == [1, 1]
    assert table.get("from-child") == {"rev": 1}


def test_table_threads_get_their_own_connections(tmp_path):
    table = SQLiteTable(tmp_path / "nanogrid.sqlite3", "jobs")
    # Create the file first: threads racing to create it can hit "database is locked" on
    # PRAGMA journal_mode=WAL, a cold-start race this test is not about.
    table.scan()
    errors = []

    def insert(number: int) -> None:
        try:
            table.insert(f"job-{number}", {"rev": 1})
        except Exception as exc:  # collected so the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(table.scan()) == 8


def test_an_unopenable_database_is_unavailable(tmp_path):
    # A directory where the database file should be: sqlite3 cannot open it.
    (tmp_path / "nanogrid.sqlite3").mkdir()
    with pytest.raises(Unavailable):
        SQLiteTable(tmp_path / "nanogrid.sqlite3", "jobs").get("job-1")
