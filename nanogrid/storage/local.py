"""Embedded backends for `nanogrid dev` and single-machine installs: a folder and SQLite."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from nanogrid.errors import Conflict, NotFound, Unavailable


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a bundle.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class LocalArchive:
    def __init__(self, root: Path):
        self.blobs = LocalBlobStore(root)

    def store_once(self, key: str, data: bytes) -> bool:
        path = self.blobs._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL makes the first writer win, like GCS's if_generation_match=0.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching a fresh file to WAL takes a lock that ignores the busy timeout, so processes
    # opening the same new database at once (API and worker starting together) retry it.
    for attempt in range(100):
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
        time.sleep(0.05)


class SQLiteTable:
    """A DocumentTable in one SQLite file shared by the API and worker processes."""

    def __init__(self, path: Path, name: str):
        if not name.isidentifier():
            raise ValueError(f"bad table name {name!r}")
        self.path = Path(path)
        self.name = name
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        # One connection per process and thread: sqlite3 connections survive neither fork nor threads.
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.name} (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL)"
            )
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _run(self, sql: str, params: tuple) -> sqlite3.Cursor:
        try:
            return self._db().execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"sqlite: {exc}") from exc

    def insert(self, doc_id: str, doc: dict) -> None:
        try:
            self._run(f"INSERT INTO {self.name} (id, rev, doc) VALUES (?, ?, ?)", (doc_id, doc["rev"], json.dumps(doc)))
        except sqlite3.IntegrityError:
            raise Conflict(doc_id) from None

    def get(self, doc_id: str) -> dict:
        row = self._run(f"SELECT doc FROM {self.name} WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise NotFound(doc_id)
        return json.loads(row[0])

    def replace(self, doc_id: str, doc: dict, expected_rev: int) -> bool:
        cur = self._run(
            f"UPDATE {self.name} SET rev = ?, doc = ? WHERE id = ? AND rev = ?",
            (doc["rev"], json.dumps(doc), doc_id, expected_rev),
        )
        return cur.rowcount == 1

    def delete(self, doc_id: str) -> None:
        self._run(f"DELETE FROM {self.name} WHERE id = ?", (doc_id,))

    def scan(self) -> list[dict]:
        return [json.loads(r[0]) for r in self._run(f"SELECT doc FROM {self.name} ORDER BY id", ())]
