"""The worker host's layer cache: each layer fetched once, unpacked once, shared by every process.

Layers (nanogrid/layers.py) are unpacked under NANOGRID_LAYER_CACHE_DIR/<sha256>, into a
temporary folder first and renamed into place, so a folder that exists is complete and two
processes unpacking the same layer at once both end up with the one that won the rename. Each
process holds a shared lock (flock) on <sha256>.lock for every layer it may still mount (those of
its current run and its warm containers); past NANOGRID_LAYER_CACHE_MB, the least recently used
layers are removed, but only those whose lock can be taken exclusively, that is, that no process
of the host mounts. A lock dies with its process, so a killed worker holds nothing.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

MiB = 1024 * 1024
READY_MARK = ".nanogrid-layer"  # written last inside a layer folder: its size, for the cache's accounting


class LayerCache:
    def __init__(self, root: Path, limit_mb: int):
        self.root = Path(root)
        self.limit_bytes = limit_mb * MiB
        self.lock = threading.Lock()
        self.held: dict[str, int] = {}  # sha -> this process's open lock file (a shared flock)
        self.pid = os.getpid()

    def path(self, sha: str, fetch: Callable[[], bytes], in_use: Callable[[], Iterable[Path]]) -> Path:
        """The unpacked layer's folder, fetched and unpacked if this host has not yet; held by this
        process until it no longer uses it (in_use: the layer folders its containers mount)."""
        with self.lock:
            if self.pid != os.getpid():  # a forked child: its parent's locks are not its own to release
                self.pid, self.held = os.getpid(), {}
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
            self._hold(sha)
            folder = self.root / sha
            if not folder.is_dir():
                self._unpack(sha, fetch())
            os.utime(self.root / f"{sha}.lock")  # the cache's recency
            self._evict(keep={sha, *(p.name for p in in_use())})
            return folder

    def _hold(self, sha: str) -> None:
        if sha in self.held:
            return
        fd = os.open(self.root / f"{sha}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self.held[sha] = fd

    def _unpack(self, sha: str, data: bytes) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=self.root))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                archive.extractall(staging, filter="data")
            size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
            (staging / READY_MARK).write_text(str(size))
            for path in [staging, *staging.rglob("*")]:  # readable by the sandbox's user, writable by none
                path.chmod(0o755 if path.is_dir() or path.stat().st_mode & 0o111 else 0o644)
            try:
                staging.rename(self.root / sha)
            except OSError:  # another process of the host unpacked it first
                if not (self.root / sha).is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _evict(self, keep: set[str]) -> None:
        for sha in [sha for sha in self.held if sha not in keep]:  # no longer mounted by this process
            os.close(self.held.pop(sha))
        layers = []
        for mark in self.root.glob(f"*/{READY_MARK}"):
            sha = mark.parent.name
            try:
                layers.append((os.stat(self.root / f"{sha}.lock").st_mtime, sha, int(mark.read_text() or 0)))
            except (OSError, ValueError):
                continue
        total = sum(size for _, _, size in layers)
        for _, sha, size in sorted(layers):
            if total <= self.limit_bytes:
                return
            if sha in keep or not self._remove_if_unused(sha):
                continue
            total -= size

    def _remove_if_unused(self, sha: str) -> bool:
        try:
            fd = os.open(self.root / f"{sha}.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # a process of this host mounts it
        try:
            doomed = self.root / f".removing-{sha[:12]}-{time.monotonic_ns()}"
            (self.root / sha).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            return True
        finally:
            os.close(fd)
