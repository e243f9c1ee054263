"""The worker host's layer cache (nanogrid/worker/layers.py): one unpacked copy per host, shared by
its processes, and the eviction that never removes a layer another process holds."""

from __future__ import annotations

import io
import multiprocessing
import tarfile

from nanogrid.worker.layers import LayerCache

MiB = 1024 * 1024


def layer(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("pkg/blob.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(b"x" * size))
    return buffer.getvalue()


def hold(root, sha, ready, release):
    """Another process of the host: it takes the layer (and so holds it) until told to let go."""
    LayerCache(root, 1).path(sha, lambda: layer(MiB), set)
    ready.set()
    release.wait(30)


def test_a_layer_is_fetched_once_and_unpacked_read_only(tmp_path):
    cache, fetched = LayerCache(tmp_path, 100), []
    for _ in range(2):
        folder = cache.path("a" * 64, lambda: fetched.append(1) or layer(10), set)
    assert fetched == [1] and (folder / "pkg" / "blob.bin").read_bytes() == b"x" * 10
    assert (folder / "pkg" / "blob.bin").stat().st_mode & 0o777 == 0o644


def test_past_the_bound_the_least_recent_layer_goes_unless_another_process_holds_it(tmp_path):
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    other = context.Process(target=hold, args=(tmp_path, "h" * 64, ready, release))
    other.start()
    try:
        assert ready.wait(30)
        cache = LayerCache(tmp_path, 2)  # 2 MiB: room for two of the 1 MiB layers
        cache.path("o" * 64, lambda: layer(MiB), set)  # the oldest of this process's
        cache.path("n" * 64, lambda: layer(MiB), set)  # over the bound: "o" goes, "h" is held
        assert not (tmp_path / ("o" * 64)).exists()
        assert (tmp_path / ("h" * 64)).is_dir() and (tmp_path / ("n" * 64)).is_dir()
    finally:
        release.set()
        other.join(30)
    cache.path("m" * 64, lambda: layer(MiB), set)  # "h" is nobody's now: the oldest goes
    assert not (tmp_path / ("h" * 64)).exists() and (tmp_path / ("n" * 64)).is_dir()
