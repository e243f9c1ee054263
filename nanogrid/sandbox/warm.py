"""Warm sandboxes: containers kept running between runs of the same function version.

A warm container runs the runner in serve mode (runtime/runner.py) for exactly one `Key`: one
tenant's function at one version and code sha256 (and the directory holding that code), with one
set of container-level limits (memory, CPUs, processes, open files, file size, tmpfs) and with or
without an AI directory. It is never
shared with another function, version or tenant, and it runs one invocation at a time; per-run
limits (deadline, output cap) are the worker's, as for any run. Between runs the runner has
killed the run's processes and emptied /tmp, /dev/shm and the IPC namespace, and every run is a
fresh fork (in handler mode, of the zygote that imported main.py once), so nothing of one run is
visible to the next (the reuse contract in runner.py).

The pool belongs to one worker process (each prefork child has its own; its bounds are per
process): per key at most `warm_pool_size` idle containers, in all at most
`warm_max_containers` containers and `warm_memory_budget_mb` of their memory limits, idle ones
removed after `warm_idle_ttl_s`. Over a bound, the least recently used idle containers go first.
A newer version of a function evicts the older versions' idle containers as soon as a run asks
for it, unless runs still arrive for them (an alias points at them: the served versions the last
check found); a background thread removes expired ones, ones whose container died, and (through
`served_versions`, installed by the worker) those of deleted functions and of versions no run
arrives for any more (superseded, and no alias's).
NANOGRID_WARM_POOL_SIZE=0 disables reuse: every run gets a container of its own.

Stem cells (NANOGRID_STEM_CELLS per worker process) are containers started ahead of demand, for
the default limits class, whose runner waits with no function's code yet: their /code is a
private, empty folder of their own, mounted read-only. The first run of a version that finds no
warm container of its own takes one (`claim_stem`), the sandbox writes that version's code into
the folder, and from then on it is that version's warm container like any other (its `key` is
set once, at the claim, and never changes): it serves no other version and no other tenant.
The pool starts a new one in the background each time one is claimed or dies. Stem cells count
in the pool's bounds (containers, memory) and are the first to go when a warm container needs
the room.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nanogrid.config import Settings
from nanogrid.limits import Limits

log = logging.getLogger(__name__)

# How often the background thread looks at idle containers (expiry, liveness).
MAINTAIN_S = 1.0
# Stem cells that failed to start this many times in a row: no more tries for STEM_RETRY_S.
STEM_FAILURES_PAUSE = 3
STEM_RETRY_S = 30.0


def container_limits(limits: Limits) -> Limits:
    """The limits a container is made with: the deadlines and the output cap are the worker's,
    per run, so they are zeroed (they do not make another container)."""
    return dataclasses.replace(limits, timeout_s=0, output_bytes=0, init_timeout_s=0)


@dataclass(frozen=True)
class Key:
    """What a warm container is for; two runs share a container only if their keys are equal."""

    tenant: str
    function_id: str
    version: int
    code_sha: str
    code_dir: str  # the directory mounted at /code (one per version and sha in a worker process)
    limits: Limits  # the container's own (memory, CPUs, processes, files, tmpfs); per-run ones zeroed
    ai: bool
    layer_dir: str | None = None  # the directory mounted at /opt/layer, if any
    init: str = "once"  # main.py imported once per container (its zygote), or per run

    @classmethod
    def of(cls, spec) -> "Key":
        return cls(spec.tenant, spec.function_id, spec.version, spec.code_sha, str(spec.code_dir),
                   container_limits(spec.limits),
                   spec.ai_channel is not None or spec.ai_socket_dir is not None,
                   None if spec.layer_dir is None else str(spec.layer_dir), spec.init)

    @property
    def memory_mb(self) -> int:
        return self.limits.memory_mb


@dataclass(eq=False)
class Slot:
    """One container with a runner in serve mode, and the stream the worker talks to it over."""

    container: Any  # docker.models.containers.Container
    stream: Any  # the attach socket (socket.SocketIO from docker-py), kept so nothing closes it
    key: Key | None  # None: a stem cell not claimed yet
    code_dir: Path
    ai_dir: Path | None = None
    runs: int = 0
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    pending: bytearray = field(default_factory=bytearray)  # a partly received multiplexing header
    # A stem cell's own code folder (code_dir), made for it and removed with it.
    owns_code_dir: bool = False
    memory_mb: int = 0  # its memory limit (a stem cell has no key yet to say)

    def __post_init__(self):
        if self.key is not None:
            self.memory_mb = self.key.memory_mb

    @property
    def sock(self) -> socket.socket:
        return getattr(self.stream, "_sock", self.stream)

    def close(self) -> None:
        """Cut the stream: the runner sees the end of its stdin (and dockerd stops copying)."""
        if self.stream is None:
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.stream.close()
        except OSError:
            pass

    def alive(self) -> bool:
        """An idle runner writes nothing: anything to read on its stream is its end (or junk)."""
        if self.pending:
            return False
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False


class WarmPool:
    def __init__(self, settings: Settings, discard: Callable[[Slot], None],
                 tidy: Callable[[], None] = lambda: None):
        """discard removes one container for good; tidy runs with every maintenance pass (the
        sandbox removes there what it could not remove before)."""
        self.size = settings.warm_pool_size
        self.idle_ttl_s = settings.warm_idle_ttl_s
        self.max_containers = settings.warm_max_containers
        self.memory_budget_mb = settings.warm_memory_budget_mb
        self.check_every_s = settings.reaper_interval_s
        self.discard = discard
        self.tidy = tidy
        # The versions of a function runs arrive for (its current one and its aliases'), or None
        # once it is deleted (set by the worker); what the last check found, per function.
        self.served_versions: Callable[[str], frozenset[int] | None] | None = None
        self._served: dict[str, frozenset[int]] = {}
        self._idle: dict[Key, list[Slot]] = {}  # least recently used first
        self._busy: set[Slot] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._checked_at = 0.0
        self._stems_paused_at = 0.0  # when the starts failed STEM_FAILURES_PAUSE times in a row
        self._removals: list[threading.Thread] = []  # evictions under way
        # Stem cells: how many to keep ready, and what starts one (installed by the sandbox).
        self.stem_target = 0
        self.start_stem: Callable[[], Slot] | None = None
        self.stem_memory_mb = 0  # their memory limit (the default limits class's), set with start_stem
        self._stems: list[Slot] = []
        self._stems_starting = 0
        self._stem_failures = 0  # in a row: a start that keeps failing is retried less often

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.max_containers > 0 and not self._closed

    # -- the run's side ------------------------------------------------------------------------

    def acquire(self, key: Key) -> Slot | None:
        """An idle container for key (the most recently used one), now busy; None if there is none."""
        evicted, slot = [], None
        with self._lock:
            for other in [k for k in self._idle if (k.tenant, k.function_id) == (key.tenant, key.function_id)
                          and k.version < key.version and k.version not in self._served.get(k.function_id, ())]:
                evicted += self._idle.pop(other)  # a newer version was asked for: the old one is done
            slots = self._idle.get(key, [])
            while slots and slot is None:
                candidate = slots.pop()
                if candidate.alive():
                    slot = candidate
                else:
                    evicted.append(candidate)
            if not slots:
                self._idle.pop(key, None)
            if slot is not None:
                self._busy.add(slot)
        self._remove_later(evicted)  # not on this run's path: removing a running container takes a while
        return slot

    def claim_stem(self, key: Key) -> Slot | None:
        """A stem cell, now key's container and busy; None if none is ready (a new one starts)."""
        claimed, dead = None, []
        with self._lock:
            while self._stems and claimed is None:
                candidate = self._stems.pop()
                if candidate.alive():
                    claimed = candidate
                else:
                    dead.append(candidate)
            if claimed is not None:
                claimed.key = key  # once, for good: it serves this version of this tenant only
                claimed.last_used = time.monotonic()
                self._busy.add(claimed)
        self._remove_later(dead)
        self.refill()
        return claimed

    def stems(self) -> list[Slot]:
        with self._lock:
            return list(self._stems)

    def refill(self) -> None:
        """Start stem cells in the background until stem_target are ready or starting, within the bounds."""
        with self._lock:
            if not self.enabled or self.start_stem is None:
                return
            wanted = self.stem_target - len(self._stems) - self._stems_starting
            if wanted <= 0 or self._stems_starting:
                return  # one start at a time: it starts the next one when it is done
            self._stems_starting += 1
        threading.Thread(target=self._start_stems, name="nanogrid-stem-cells", daemon=True).start()
        self._start_thread()

    def _slots(self) -> list[Slot]:
        """Every container of the pool: busy, idle and stem cells (lock held)."""
        return [*self._busy, *self._stems, *(s for slots in self._idle.values() for s in slots)]

    def _room_for_stem(self) -> bool:
        """Whether one more stem cell fits the container and memory bounds (lock held)."""
        slots = self._slots()
        memory = sum(s.memory_mb for s in slots) + self.stem_memory_mb
        return len(slots) + 1 <= self.max_containers and memory <= self.memory_budget_mb

    def _start_stems(self) -> None:
        try:
            while True:
                with self._lock:
                    if (self._closed or len(self._stems) >= self.stem_target or not self._room_for_stem()
                            or self._stem_failures >= STEM_FAILURES_PAUSE):
                        return
                try:
                    slot = self.start_stem()
                except Exception as exc:  # noqa: BLE001 - the engine is away, say: a later pass tries again
                    log.warning("cannot start a stem cell: %s", exc)
                    with self._lock:
                        self._stem_failures += 1
                        if self._stem_failures == STEM_FAILURES_PAUSE:
                            self._stems_paused_at = time.monotonic()
                    continue
                with self._lock:
                    self._stem_failures = 0
                    keep = not self._closed and len(self._stems) < self.stem_target
                    if keep:
                        self._stems.append(slot)
                if not keep:
                    self._remove([slot])
        finally:
            with self._lock:
                self._stems_starting -= 1

    def track(self, slot: Slot) -> None:
        """A container just started for a run: busy until released."""
        with self._lock:
            self._busy.add(slot)
        self._start_thread()

    def release(self, slot: Slot, reusable: bool) -> None:
        """The run is over: keep the container idle if it may serve again and fits, else remove it."""
        with self._lock:
            self._busy.discard(slot)
            keep = reusable and self.enabled and slot.memory_mb <= self.memory_budget_mb
            if keep:
                slot.last_used = time.monotonic()
                self._idle.setdefault(slot.key, []).append(slot)
                evicted = self._over_bounds()
        if keep:
            self._remove_later(evicted)  # others, idle: the run's result need not wait for them
        else:
            self._remove([slot])  # recycled: gone before the run's result is reported

    # -- bounds and maintenance ----------------------------------------------------------------

    def _over_bounds(self) -> list[Slot]:
        """Idle containers to evict to be within every bound, least recently used first (lock held)."""
        evicted = []
        for slots in self._idle.values():
            while len(slots) > self.size:
                evicted.append(slots.pop(0))
        idle = sorted((s for slots in self._idle.values() for s in slots), key=lambda s: s.last_used)
        count = len(self._busy) + len(idle) + len(self._stems)
        memory = sum(s.memory_mb for s in [*self._busy, *idle, *self._stems])
        # Stem cells first (a warm container has a version's state; a stem cell is a spare), then
        # idle containers, least recently used first.
        while (self._stems or idle) and (count > self.max_containers or memory > self.memory_budget_mb):
            if self._stems:
                victim = self._stems.pop(0)
            else:
                victim = idle.pop(0)
                self._idle[victim.key].remove(victim)
            evicted.append(victim)
            count -= 1
            memory -= victim.memory_mb
        self._prune()
        return evicted

    def _prune(self) -> None:
        for key in [k for k, slots in self._idle.items() if not slots]:
            del self._idle[key]

    def maintain(self, now: float | None = None) -> int:
        """Remove expired, dead and outdated idle containers; how many were removed."""
        now = time.monotonic() if now is None else now
        check_versions = self.served_versions is not None and now - self._checked_at >= self.check_every_s
        with self._lock:
            functions = {k.function_id for k in self._idle} if check_versions else set()
        latest = {}
        for function_id in functions:  # outside the lock: a store round trip each
            try:
                latest[function_id] = self.served_versions(function_id)
            except Exception:  # noqa: BLE001 - a store hiccup keeps the containers until the next check
                log.debug("cannot check function %s for warm containers", function_id, exc_info=True)
        if check_versions:
            self._checked_at = now
        evicted = []
        with self._lock:
            self._served.update({f: served for f, served in latest.items() if served is not None})
            for key, slots in self._idle.items():
                served = latest.get(key.function_id, ())
                outdated = key.function_id in latest and (served is None or (
                    key.version not in served and key.version < max(served)))
                for slot in list(slots):
                    if outdated or now - slot.last_used >= self.idle_ttl_s or not slot.alive():
                        slots.remove(slot)
                        evicted.append(slot)
            dead = [s for s in self._stems if not s.alive()]
            self._stems = [s for s in self._stems if s not in dead]
            evicted += dead
            if self._stem_failures >= STEM_FAILURES_PAUSE and now - self._stems_paused_at >= STEM_RETRY_S:
                self._stem_failures = 0  # a while later: try again
            self._prune()
        self._remove(evicted)
        self.refill()
        return len(evicted)

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nanogrid-warm-pool", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(max(0.05, min(MAINTAIN_S, self.idle_ttl_s / 2))):
            try:
                self.maintain()
                self.tidy()
            except Exception:  # noqa: BLE001 - one failed pass must not end the maintenance
                log.exception("warm pool maintenance failed")

    def _remove_later(self, slots: list[Slot]) -> None:
        if not slots:
            return
        thread = threading.Thread(target=self._remove, args=(slots,), name="nanogrid-warm-evict", daemon=True)
        with self._lock:
            self._removals = [t for t in self._removals if t.is_alive()] + [thread]
        thread.start()

    def _remove(self, slots: list[Slot]) -> None:
        for slot in slots:
            try:
                self.discard(slot)
            except Exception:  # noqa: BLE001 - the reaper removes what could not be removed here
                log.warning("cannot remove warm container %s", slot.container.id[:12], exc_info=True)

    # -- views and shutdown ----------------------------------------------------------------------

    def idle(self) -> list[Slot]:
        with self._lock:
            return [s for slots in self._idle.values() for s in slots]

    def busy(self) -> list[Slot]:
        with self._lock:
            return list(self._busy)

    def code_dirs(self) -> set[Path]:
        """The code directories mounted by this pool's containers (they must stay)."""
        with self._lock:
            slots = self._slots()
            # A claimed stem cell has its own copy, and its key names the version's folder: both stay.
            return {s.code_dir for s in slots} | {Path(s.key.code_dir) for s in slots if s.key is not None}

    def layer_dirs(self) -> set[Path]:
        """The layer directories mounted by this pool's containers (the host's cache keeps them)."""
        with self._lock:
            return {Path(s.key.layer_dir) for s in self._slots() if s.key is not None and s.key.layer_dir}

    def close(self, timeout_s: float = 30) -> None:
        """Remove every idle container (in parallel); runs in progress remove theirs when they end."""
        with self._lock:
            self._closed = True
            slots = [s for slots in self._idle.values() for s in slots] + self._stems
            self._idle.clear()
            self._stems = []
            removals = list(self._removals)
        self._stop.set()
        threads = [threading.Thread(target=self._remove, args=([s],), daemon=True) for s in slots] + removals
        for thread in threads[:len(slots)]:
            thread.start()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def settle(self, timeout_s: float = 30) -> None:
        """Wait for the evictions under way (tests, shutdown)."""
        with self._lock:
            removals = list(self._removals)
        deadline = time.monotonic() + timeout_s
        for thread in removals:
            thread.join(max(0.0, deadline - time.monotonic()))
