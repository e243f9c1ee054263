"""The warm pool's stem cells within its bounds (nanogrid/sandbox/warm.py), with stand-in slots:
they count like containers, go first when a warm container needs the room, are refilled only
where they fit, and a claimed one is its key's for good."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nanogrid.config import Settings
from nanogrid.limits import Limits
from nanogrid.sandbox.warm import STEM_FAILURES_PAUSE, STEM_RETRY_S, Key, Slot, WarmPool
from support.waiting import eventually

LIMITS = Limits(timeout_s=0, memory_mb=256, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=0, init_timeout_s=0)


class Slots:
    """Stand-in containers: a socket pair each (an idle runner writes nothing: alive)."""

    def __init__(self):
        self.made: list[Slot] = []
        self.removed: list[Slot] = []
        self.ends: list[socket.socket] = []
        self.lock = threading.Lock()

    def make(self, key: Key | None = None) -> Slot:
        ours, theirs = socket.socketpair()
        with self.lock:
            self.ends.append(theirs)
            slot = Slot(SimpleNamespace(id=f"c{len(self.made):03d}" * 4), ours, key, Path("/nonexistent"))
            slot.memory_mb = LIMITS.memory_mb
            self.made.append(slot)
        return slot

    def remove(self, slot: Slot) -> None:
        with self.lock:
            self.removed.append(slot)
        slot.close()


def key(version: int = 1, tenant: str = "t1") -> Key:
    return Key(tenant, "fn-1", version, "sha", "/code-dir", LIMITS, False)


@pytest.fixture
def slots():
    made = Slots()
    yield made
    for end in made.ends:
        end.close()


def pool_of(slots: Slots, **settings) -> WarmPool:
    pool = WarmPool(Settings(**settings), slots.remove)
    pool.stem_memory_mb, pool.start_stem, pool.stem_target = LIMITS.memory_mb, slots.make, 2
    return pool


def test_stem_cells_are_refilled_up_to_their_target_and_a_claim_binds_one_to_its_key(slots):
    pool = pool_of(slots, warm_max_containers=8)
    try:
        pool.refill()
        eventually(lambda: len(pool.stems()) == 2, 10, "two stem cells")
        claimed = pool.claim_stem(key(tenant="t1"))
        assert claimed is not None and claimed.key == key(tenant="t1") and claimed in pool.busy()
        eventually(lambda: len(pool.stems()) == 2 and len(slots.made) == 3, 10, "a third one, refilled")
        pool.release(claimed, reusable=True)
        assert pool.acquire(key(tenant="t2")) is None  # another tenant's key: never the claimed container
        assert pool.acquire(key(tenant="t1")) is claimed
    finally:
        pool.close()


def test_stem_cells_count_in_the_bounds_and_go_first(slots):
    pool = pool_of(slots, warm_max_containers=3)
    try:
        pool.refill()
        eventually(lambda: len(pool.stems()) == 2, 10, "two stem cells")
        warm = [slots.make(key(version=1)), slots.make(key(version=2))]
        for slot in warm:
            pool.track(slot)
        for slot in warm:
            pool.release(slot, reusable=True)
        # Four containers for a bound of three: a stem cell went, not a warm container.
        eventually(lambda: len(slots.removed) == 1, 10, "a stem cell removed")
        assert set(slots.removed).isdisjoint(warm) and len(pool.stems()) == 1
        assert sorted(s.key.version for s in pool.idle()) == [1, 2]
        pool.refill()  # no room for another one
        pool.maintain()
        assert len(pool.stems()) == 1 and len(slots.made) == 4
    finally:
        pool.close()


def test_no_stem_cell_outside_the_memory_budget(slots):
    pool = pool_of(slots, warm_memory_budget_mb=LIMITS.memory_mb - 1)
    try:
        pool.refill()
        pool.settle()
        assert pool.stems() == [] and slots.made == []
    finally:
        pool.close()


def test_a_stem_cell_start_that_keeps_failing_pauses_before_it_is_tried_again(slots):
    tries = []

    def failing() -> Slot:
        tries.append(time.monotonic())
        raise RuntimeError("the engine is away")

    pool = pool_of(slots)
    pool.start_stem = failing
    try:
        pool.refill()
        eventually(lambda: len(tries) == STEM_FAILURES_PAUSE and not pool._stems_starting, 10, "the tries in a row")
        pool.maintain()  # within the pause: no more tries
        eventually(lambda: not pool._stems_starting, 10, "no start under way")
        assert len(tries) == STEM_FAILURES_PAUSE
        pool.maintain(now=time.monotonic() + STEM_RETRY_S)  # after it: tried again
        eventually(lambda: len(tries) == 2 * STEM_FAILURES_PAUSE, 10, "a second round of tries")
    finally:
        pool.close()
