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
from nanogrid.storage import UNTIL_SUFFIX, Entries, Page, sort_key


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


PAGE_CACHE_KIB = 256  # per connection


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
    """A DocumentTable in one SQLite file shared by the API and worker processes.

    Index entries live in a side table (index name, partition, sort key, id) with an index on the
    first three, written in the same transaction as the document."""

    def __init__(self, path: Path, name: str, indexes: tuple[str, ...] = (), expires: bool = False):
        if not name.isidentifier():
            raise ValueError(f"bad table name {name!r}")
        self.path = Path(path)
        self.name = name
        self.indexes = indexes
        self.expires = expires
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        # One connection per process and thread: sqlite3 connections survive neither fork nor threads.
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            # Every thread of every process has connections of its own, and each would fill
            # SQLite's default 2 MiB page cache as the file grows (the API's 2 x 16 threads: up
            # to 64 MiB a table); the OS page cache holds the file for all of them anyway.
            conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.name} (id TEXT PRIMARY KEY, rev INTEGER NOT NULL, doc TEXT NOT NULL)"
            )
            if self.indexes:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.name}_index (ix TEXT NOT NULL, part TEXT NOT NULL, "
                             "sk TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (ix, id))")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {self.name}_index_order ON {self.name}_index (ix, part, sk)")
            if self.expires:
                conn.execute(f"CREATE INDEX IF NOT EXISTS {self.name}_expiry ON {self.name} "
                             "(json_extract(doc, '$.expires_at'))")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _run(self, sql: str, params: tuple) -> sqlite3.Cursor:
        try:
            return self._db().execute(sql, params)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"sqlite: {exc}") from exc

    def _write(self, doc_id: str, sql: str, params: tuple, entries: Entries | None) -> int:
        """Run the document's write and, in the same transaction, replace its index entries;
        the number of rows the write changed (0: its condition failed, nothing was written)."""
        for index in entries or {}:
            self._check_index(index)
        if not self.indexes:
            return self._run(sql, params).rowcount
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                changed = db.execute(sql, params).rowcount
                if changed:
                    db.execute(f"DELETE FROM {self.name}_index WHERE id = ?", (doc_id,))
                    for index, entry in (entries or {}).items():
                        if entry is not None:
                            db.execute(f"INSERT INTO {self.name}_index (ix, part, sk, id) VALUES (?, ?, ?, ?)",
                                       (index, entry.partition, sort_key(entry.sort, doc_id), doc_id))
                db.execute("COMMIT")
                return changed
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"sqlite: {exc}") from exc

    def _check_index(self, index: str) -> None:
        if index not in self.indexes:
            raise ValueError(f"table {self.name} has no index {index!r}")

    def insert(self, doc_id: str, doc: dict, entries: Entries | None = None) -> None:
        try:
            self._write(doc_id, f"INSERT INTO {self.name} (id, rev, doc) VALUES (?, ?, ?)",
                        (doc_id, doc["rev"], json.dumps(doc)), entries)
        except sqlite3.IntegrityError:
            raise Conflict(doc_id) from None

    def get(self, doc_id: str) -> dict:
        row = self._run(f"SELECT doc FROM {self.name} WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            raise NotFound(doc_id)
        return json.loads(row[0])

    def replace(self, doc_id: str, doc: dict, expected_rev: int, entries: Entries | None = None) -> bool:
        return self._write(doc_id, f"UPDATE {self.name} SET rev = ?, doc = ? WHERE id = ? AND rev = ?",
                           (doc["rev"], json.dumps(doc), doc_id, expected_rev), entries) == 1

    def delete(self, doc_id: str) -> None:
        self._run(f"DELETE FROM {self.name} WHERE id = ?", (doc_id,))
        if self.indexes:
            self._run(f"DELETE FROM {self.name}_index WHERE id = ?", (doc_id,))

    def scan(self) -> list[dict]:
        return [json.loads(r[0]) for r in self._run(f"SELECT doc FROM {self.name} ORDER BY id", ())]

    def query(self, index: str, partition: str, *, since: float | None = None, until: float | None = None,
              newest_first: bool = False, limit: int = 100, cursor: str | None = None) -> Page:
        self._check_index(index)
        where, params = ["i.ix = ?", "i.part = ?"], [index, partition]
        if since is not None:
            where.append("i.sk >= ?")
            params.append(sort_key(since, ""))
        if until is not None:
            where.append("i.sk <= ?")
            params.append(sort_key(until, UNTIL_SUFFIX))
        if cursor is not None:
            where.append("i.sk < ?" if newest_first else "i.sk > ?")
            params.append(cursor)
        rows = self._run(
            f"SELECT i.sk, t.doc FROM {self.name}_index i JOIN {self.name} t ON t.id = i.id "
            f"WHERE {' AND '.join(where)} ORDER BY i.sk {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (*params, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([json.loads(doc) for _, doc in rows], rows[-1][0] if more and rows else None)

    def expire(self, now: float) -> list[str]:
        if not self.expires:
            return []
        rows = self._run(f"SELECT id FROM {self.name} WHERE json_extract(doc, '$.expires_at') <= ?", (now,)).fetchall()
        for (doc_id,) in rows:
            self.delete(doc_id)
        return [doc_id for (doc_id,) in rows]
