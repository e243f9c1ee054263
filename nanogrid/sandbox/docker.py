"""The Docker sandbox: runs execute in locked-down containers of the runtime image, kept warm.

The container has no network, a read-only root, a small noexec /tmp, no capabilities and an
unprivileged user; memory, CPU, processes, open files and file size are capped by the kernel.
Its main process (PID 1, no init in between) is the runner in serve mode (runtime/runner.py) for
one function version's code, mounted read-only at /code. The worker talks to it over the
container's attached stdin and stdout (Docker's multiplexed stream, parsed here): one request per
run, answered by frames ending with the exit frame, after which the runner has cleaned the
container and it goes back to the warm pool (warm.py) for the next run of the same version.

The worker enforces the wall-clock deadline and the output cap itself, by killing the container;
if the container's output has not ended KILL_GRACE_S after a kill (a wedged dockerd or runtime),
it cuts the stream and force-removes the container, so no run outlives its deadline by more than
that. Every abnormal end (a kill for whatever reason, an OOM kill, a user process killed by a
signal, a broken stream, a runner that could not clean up) removes the container instead of
returning it to the pool; its exit state (exit code, OOMKilled) is read first. With the pool
disabled (NANOGRID_WARM_POOL_SIZE=0) each run gets a container of its own, labelled with the job
as before. Leftovers are found by their labels (the reaper): nanogrid.job for single-use
containers, nanogrid.warm (the owning worker process) for warm ones. Peak memory and CPU time of
a run come from the runner's accounting of the user process (a warm container's cgroup spans
many runs); whether the kernel OOM-killed it, from the cgroup's oom_kill counter (the runner's
view from inside, and the worker's from the host, which is the only one under gVisor).

The OCI runtime is the setting NANOGRID_DOCKER_RUNTIME: runc, crun or runsc (gVisor). Under runsc
the pids limit is the sandbox kernel's RLIMIT_NPROC and the pids cgroup only bounds gVisor's own
host threads (GVISOR_HOST_PIDS_*); every exit frame carries the run's nonce (protocol.py), since
gVisor lets a function open its runner's descriptors. README: Sandbox runtimes.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import re
import select
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
from docker.types import LogConfig, Mount, Ulimit
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import RequestException

from nanogrid.ai import SANDBOX_SOCKET_DIR, SOCKET_NAME
from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.limits import Limits
from nanogrid.sandbox import (LABEL_FUNCTION, LABEL_INSTANCE, LABEL_JOB, LABEL_STEM, LABEL_VERSION, LABEL_WARM,
                              LABEL_WORKER, EngineUnavailable, RawRun, RunSpec, instance_id)
from nanogrid.sandbox.janitor import DOCKER_ERRORS, STATE_DIR_PREFIX, ContainerJanitor
from nanogrid.sandbox.protocol import FrameReader, new_nonce
from nanogrid.sandbox.warm import Key, Slot, WarmPool, container_limits

log = logging.getLogger(__name__)

BUILD_HINT = "run `nanogrid image build`"
CODE_MOUNT = "/code"
LAYER_MOUNT = "/opt/layer"  # a run's installed packages (RunSpec.layer_dir), read-only
# The runner empties the container's writable places (and its IPC namespace) after every run.
# A run's secrets are files there (a tmpfs of its own, the sandbox user's only), emptied after each run.
SECRETS_MOUNT = "/run/secrets"
RUNNER_COMMAND = ["python3", "-I", "-B", "/opt/nanogrid/runner.py", CODE_MOUNT,
                  "--scrub", "/tmp", "--scrub", "/dev/shm", "--scrub-ipc", "--secrets", SECRETS_MOUNT]
SANDBOX_USER = "65534:65534"
MiB = 1024 * 1024
API_TIMEOUT_S = 60
ENGINE_CHECK_S = 2  # a heartbeat's look at dockerd: longer than this is an engine that does not answer
# After the output stream ends the container is exiting; longer than this means it is stuck.
EXIT_WAIT_S = 5
# After a kill, the container's output must end within this, or the container is force-removed.
KILL_GRACE_S = 3
# How often the supervisor samples the container's cgroup (and checks the deadline).
SAMPLE_S = 0.25
CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNNER_STDERR_KEEP = 64 * 1024
SIGKILL_EXIT_CODE = 128 + 9
READ_CHUNK = 64 * 1024
# Docker's multiplexed attach stream (no TTY): stream type, 3 zero bytes, payload length.
MUX_HEADER = struct.Struct(">BxxxI")
MUX_STDOUT, MUX_STDERR = 1, 2
SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# gVisor (runsc) runs the function's processes on its own kernel, whose ptrace platform takes host
# threads of its own: about 38 for an idle sandbox and 5 to 6 more per process of the function. The
# pids cgroup counts those, so under runsc it cannot be the function's limit (at pids=32 gVisor
# could not even start). There the limit is the sandbox kernel's RLIMIT_NPROC, which gVisor
# counts per sandbox (processes and threads, as the pids cgroup does under runc), and the cgroup
# keeps this bound on gVisor's host threads, for the host's sake. README: Sandbox runtimes.
GVISOR_HOST_PIDS_BASE = 1024
GVISOR_HOST_PIDS_PER_PROCESS = 8
# runsc flags that let the sandbox connect to a host Unix socket (the AI channel's).
GVISOR_HOST_UDS_FLAGS = ("--host-uds=open", "--host-uds=all", "--fsgofer-host-uds")


def connect(timeout: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the local dockerd (DOCKER_HOST etc. honoured), or EngineUnavailable."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DOCKER_ERRORS as exc:
        raise EngineUnavailable(f"cannot reach dockerd: {exc}") from exc
    return client


def _engine_error(what: str, exc: Exception) -> Unavailable:
    """dockerd refused (it answered with an error) or could not be reached (the engine is gone)."""
    if isinstance(exc, docker.errors.APIError):
        return Unavailable(f"{what}: {exc}")
    return EngineUnavailable(f"{what}: the Docker engine does not answer ({exc})")


class _Usage:
    """Peak memory and CPU time of a running container, from its cgroup files (a few µs a read).

    cgroup v1 (cgroupfs or systemd driver) and v2 layouts; when none is visible (a worker inside
    a container without the host's cgroupfs) the figures stay None. The files vanish when the
    container exits, so the supervisor samples while it runs and once more when the runner
    reports the user process's exit; max_usage / memory.peak are high-water marks, so the last
    successful read holds the peak.
    """

    def __init__(self, container_id: str):
        self.container_id = container_id
        self.memory_file: Path | None = None
        self.cpu_file: Path | None = None
        self.oom_file: Path | None = None
        self.located = False
        self.peak_memory_bytes: int | None = None
        self.cpu_ns: int | None = None
        self.lock = threading.Lock()  # the supervisor, a kill and the stream reader all sample

    def _locate(self) -> None:
        leaves = (Path("docker", self.container_id), Path("system.slice", f"docker-{self.container_id}.scope"))
        for leaf in leaves:
            memory = CGROUP_ROOT / "memory" / leaf / "memory.max_usage_in_bytes"
            if memory.exists():
                cpus = (CGROUP_ROOT / name / leaf / "cpuacct.usage" for name in ("cpuacct", "cpu,cpuacct"))
                self.memory_file, self.cpu_file = memory, next((p for p in cpus if p.exists()), None)
                self.oom_file = memory.with_name("memory.oom_control")
                break
            unified = CGROUP_ROOT / leaf
            if (unified / "cpu.stat").exists():
                self.memory_file = unified / "memory.peak" if (unified / "memory.peak").exists() else None
                self.cpu_file = unified / "cpu.stat"
                self.oom_file = unified / "memory.events"
                break
        self.located = True

    def sample(self) -> None:
        with self.lock:
            self._sample()

    def _sample(self) -> None:
        try:
            if not self.located:
                self._locate()
            if self.memory_file is not None:
                value = int(self.memory_file.read_text())
                self.peak_memory_bytes = max(value, self.peak_memory_bytes or 0)
            if self.cpu_file is not None:
                text = self.cpu_file.read_text()
                if self.cpu_file.name == "cpu.stat":
                    usec = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))
                    value = int(usec) * 1000
                else:
                    value = int(text)
                self.cpu_ns = max(value, self.cpu_ns or 0)
        except (OSError, ValueError, StopIteration, IndexError):
            pass  # the container is gone (or the layout is unknown): keep what was read so far

    def oom_kills(self) -> int | None:
        """The container's oom_kill counter, seen from the host (None when it cannot be read).

        The runner reads the same counter from inside; under gVisor it cannot (the sandbox has no
        cgroup files), and the host's OOM killer may take one of gVisor's processes and spare its
        kernel, which then reports the function's process killed by SIGKILL: only this tells why."""
        with self.lock:
            try:
                if not self.located:
                    self._locate()
                if self.oom_file is None:
                    return None
                # runtime/runner.py's oom_kills reads the same counter from inside, in a copy of its
                # own: the runner runs on the runtime image's bare Python and imports nothing of NanoGrid.
                for line in self.oom_file.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                pass
            return None


class _Supervisor:
    """One run's kill (at most once, never blocking the stream reader) and the escalation when a
    killed container's output does not end; the stream reader checks the deadline."""

    def __init__(self, sandbox: "DockerSandbox", container, usage: _Usage):
        self.sandbox = sandbox
        self.container = container
        self.usage = usage
        self.lock = threading.Lock()
        self.ended = threading.Event()
        self.reason: str | None = None  # "timeout", "output", "garbled", "cancel" or "shutdown"
        self.killed_at: float | None = None
        self.escalated = False
        self.stream = None

    def kill(self, reason: str) -> None:
        with self.lock:
            if self.ended.is_set() or self.killed_at is not None:  # at most one kill, even after a 409
                return
            self.reason, self.killed_at = reason, time.monotonic()
        # dockerd answers a kill only once the container's output is drained, so the thread
        # reading that output must not be the one waiting for the answer.
        threading.Thread(target=self._send_kill, name=f"kill-{self.container.id[:12]}", daemon=True).start()

    def end(self) -> None:
        self.ended.set()

    def _escalate(self) -> None:
        """The kill did not end the output: cut the stream and force-remove the container."""
        self.escalated = True
        log.warning("container %s still streaming %.0f s after it was killed; force-removing it",
                    self.container.id[:12], KILL_GRACE_S)
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception:  # noqa: BLE001 - a half-closed socket must not stop the escalation
                pass
        threading.Thread(target=self.sandbox._remove, args=(self.container,), daemon=True).start()

    def _send_kill(self) -> None:
        self.usage.sample()  # the last look at the cgroup: it goes with the container
        try:
            self.container.kill()
        except docker.errors.APIError as exc:
            # 409: the container exited on its own just before the kill, so nothing was cut short.
            if exc.status_code == 409:
                with self.lock:
                    self.reason = None
            else:
                log.warning("cannot kill container %s: %s", self.container.id[:12], exc)
        except DOCKER_ERRORS as exc:
            log.warning("cannot kill container %s: %s", self.container.id[:12], exc)


class _Demux:
    """Splits Docker's multiplexed attach stream into (stream type, payload) pieces."""

    def __init__(self, pending: bytearray):
        self.buffer = pending  # the slot's: a header split across reads survives between calls

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        pieces = []
        while len(self.buffer) >= MUX_HEADER.size:
            kind, length = MUX_HEADER.unpack_from(self.buffer)
            end = MUX_HEADER.size + length
            if len(self.buffer) < end:
                break
            pieces.append((kind, bytes(self.buffer[MUX_HEADER.size:end])))
            del self.buffer[:end]
        return pieces


class _Stale(Exception):
    """An idle warm container had died before this run was handed to it: nothing ran."""


def _owner() -> str:
    """Who keeps a warm container: this worker process (host:pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _private_dir(path: Path) -> Path:
    """path (and its parent, the state folder) as folders of this user that nobody else can write to;
    OSError otherwise (another local user could have made them first, under the shared /tmp)."""
    for folder in (path.parent, path):
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise OSError(f"{folder} is not a private folder of this user")
    return path



class DockerSandbox:
    kind = "docker"
    isolated = True

    def __init__(self, settings: Settings, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        self.instance = instance_id(settings)
        self._client: docker.DockerClient | None = None
        self._client_pid: int | None = None
        self._pool: WarmPool | None = None
        self._pool_pid: int | None = None
        self._running: dict[str, _Supervisor] = {}
        # The function's latest version, None once deleted: lets the pools drop outdated containers.
        self.served_versions = None
        # Per installation on this host: which warm container runs which job (for kill() from
        # another process: the worker's control command, a test), and the containers' AI folders.
        self.state_dir = Path(tempfile.gettempdir()) / f"{STATE_DIR_PREFIX}{self.instance}"
        self._pool_lock = threading.Lock()
        # Containers that could not be removed (the engine was away): removed when it answers again.
        self._leftovers: set[str] = set()
    @property
    def client(self) -> docker.DockerClient:
        # A client's connection pool must not cross a fork: the prefork worker makes one per child.
        if self._client is None or self._client_pid != os.getpid():
            self._client = connect()
            self._client_pid = os.getpid()
        return self._client

    @property
    def pool(self) -> WarmPool:
        """This process's warm pool (a forked child never uses its parent's containers)."""
        with self._pool_lock:  # runs of several threads may ask for it first at once
            if self._pool is None or self._pool_pid != os.getpid():
                pool = WarmPool(self.settings, self._discard, self._remove_leftovers)
                pool.served_versions = self.served_versions
                self._pool, self._pool_pid, self._running, self._leftovers = pool, os.getpid(), {}, set()
                atexit.register(self._close, pool)
                try:  # a prefork child ends with os._exit: atexit would not run there
                    from celery.signals import worker_process_shutdown

                    worker_process_shutdown.connect(lambda **_: self._close(pool), weak=False)
                except ImportError:
                    pass
            return self._pool

    def start_stem_cells(self) -> None:
        """Keep NANOGRID_STEM_CELLS stem cells ready in this process (warm.py), from now on."""
        pool = self.pool
        if self.settings.stem_cells <= 0 or not pool.enabled:
            return
        pool.stem_memory_mb = self.stem_limits.memory_mb
        pool.start_stem = self._start_stem
        pool.stem_target = self.settings.stem_cells
        pool.refill()

    @functools.cached_property
    def stem_limits(self) -> Limits:
        """The limits class stem cells are made for: a function's defaults, as a warm Key holds them."""
        return container_limits(Limits.resolve(self.settings))

    def _start_stem(self) -> Slot:
        """A container for no function yet: its runner waits, its own /code folder is empty."""
        code_dir = self._new_folder("stem")
        spec = RunSpec("", "", code_dir, None, self.stem_limits)
        try:
            slot = self._start(spec, None, warm=True, ai_folder=bool(self.settings.ai_endpoint))
        except BaseException:
            shutil.rmtree(code_dir, ignore_errors=True)
            raise
        slot.owns_code_dir, slot.memory_mb = True, spec.limits.memory_mb
        return slot

    def _claim_stem(self, spec: RunSpec, key: Key) -> Slot | None:
        """A stem cell with spec's code written into its own folder, now key's warm container; None
        if spec is not of the stem cells' class or none is ready."""
        pool = self.pool
        if (pool.stem_target <= 0 or spec.layer_dir is not None or spec.ai_socket_dir is not None
                or key.limits != self.stem_limits or key.ai != bool(self.settings.ai_endpoint)):
            return None
        slot = pool.claim_stem(key)
        if slot is None:
            return None
        try:
            # Copied, not linked: the folder is the container's alone and goes with it. Mounted
            # read-only, it is read-only to the run's user (who is the runner's user too, so files
            # the runner wrote itself inside could be changed back by a run).
            shutil.copytree(spec.code_dir, slot.code_dir, dirs_exist_ok=True)
        except OSError as exc:
            log.warning("cannot write the code into stem cell %s: %s", slot.container.id[:12], exc)
            pool.release(slot, reusable=False)
            return None
        return slot

    def watch_functions(self, served_versions) -> None:
        """served_versions(function_id) -> the versions runs arrive for, or None once it is deleted."""
        self.served_versions = served_versions
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.served_versions = served_versions

    def code_dirs_in_use(self) -> set[Path]:
        """The code directories this process's containers mount (they must not be removed)."""
        if self._pool is None or self._pool_pid != os.getpid():
            return set()
        return self._pool.code_dirs()

    def layer_dirs_in_use(self) -> set[Path]:
        """The layer directories this process's containers mount (the layer cache keeps them)."""
        if self._pool is None or self._pool_pid != os.getpid():
            return set()
        return self._pool.layer_dirs()

    def ping(self) -> None:
        try:
            self.client.ping()
        except DOCKER_ERRORS as exc:
            raise EngineUnavailable(f"cannot reach dockerd: {exc}") from exc

    def check_runtime(self) -> None:
        """Unavailable (with what to do) unless the engine has the configured runtime registered."""
        runtime = self.settings.docker_runtime
        try:
            registered = sorted(self.client.info().get("Runtimes") or {})
        except DOCKER_ERRORS as exc:
            raise EngineUnavailable(f"cannot ask dockerd for its runtimes: {exc}") from exc
        if runtime not in registered:
            raise Unavailable(f"NANOGRID_DOCKER_RUNTIME={runtime} is not registered with the Docker engine (it has "
                              f"{', '.join(registered) or 'none'}): add it to the engine's daemon.json \"runtimes\" "
                              "and reload dockerd (README: Sandbox runtimes)")
        if runtime == "runsc" and self.settings.ai_endpoint:
            arguments = (self.client.info().get("Runtimes") or {}).get("runsc", {}).get("runtimeArgs") or []
            if not any(argument in GVISOR_HOST_UDS_FLAGS for argument in arguments):
                # Not a refusal: a wrapper script registered as runsc may pass the flag itself.
                log.warning("AI_ENDPOINT is set but the engine's runsc is registered without --host-uds=open "
                            "(runtimeArgs %s): functions' AI calls will fail with EPERM (README: Sandbox runtimes)",
                            arguments)

    def engine_ok(self) -> bool:
        """Whether dockerd answers within ENGINE_CHECK_S (a client of its own: the runs' may be busy)."""
        try:
            docker.from_env(timeout=ENGINE_CHECK_S).ping()
        except DOCKER_ERRORS:
            return False
        return True

    def interrupt(self) -> int:
        """Stop this process's runs for a shutdown: each ends with what it had printed."""
        running = list(self._running.values()) if self._pool_pid == os.getpid() else []
        for supervisor in running:
            supervisor.kill("shutdown")
        return len(running)

    # -- a run -------------------------------------------------------------------------------------

    def run(self, spec: RunSpec) -> RawRun:
        pool = self.pool
        # A channel directory opened by the caller is mounted as it is: that container serves one run.
        pooled = pool.enabled and spec.ai_socket_dir is None
        key = Key.of(spec)
        for _ in range(3):
            slot = pool.acquire(key) if pooled else None
            if slot is None and pooled:
                slot = self._claim_stem(spec, key)
            if slot is None:
                slot = self._start(spec, key, warm=pooled, ai_folder=key.ai and spec.ai_socket_dir is None)
                if pooled:
                    pool.track(slot)
            reusable = False
            try:
                raw, reusable = self._serve(slot, spec)
                return raw
            except _Stale:
                continue  # it died while idle (removed by the reaper, say): another one
            finally:
                if pooled:
                    pool.release(slot, reusable)
                else:
                    self._discard(slot)
        raise Unavailable("warm containers keep dying before a run reaches them")

    def _start(self, spec: RunSpec, key: Key | None, warm: bool, ai_folder: bool) -> Slot:
        """Create, attach to and start a container for key (None: a stem cell, for spec's class)."""
        ai_dir = None
        if ai_folder:
            # The container's own AI folder, mounted read-only at SANDBOX_SOCKET_DIR: each run's
            # channel puts its socket in it (a mount cannot change after the container is created).
            try:
                ai_dir = self._new_folder("ai")
            except OSError as exc:
                raise Unavailable(f"cannot make the sandbox's AI folder: {exc}") from exc
        try:
            container = self._create(spec, ai_dir=ai_dir, warm=warm)
        except BaseException:
            if ai_dir is not None:
                shutil.rmtree(ai_dir, ignore_errors=True)
            raise
        slot = Slot(container, None, key, spec.code_dir, ai_dir)
        try:
            # Attached before the start, so not a byte of output is missed however fast the run.
            slot.stream = self.client.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            container.start()
        except DOCKER_ERRORS as exc:
            self._discard(slot)
            raise _engine_error("cannot start the sandbox container", exc) from exc
        except BaseException:
            self._discard(slot)
            raise
        return slot

    def _serve(self, slot: Slot, spec: RunSpec) -> tuple[RawRun, bool]:
        """Hand one run to the slot's runner and read its frames; (what happened, reusable)."""
        limits = spec.limits
        raw = RawRun()
        nonce = new_nonce()
        frames = FrameReader(limits.output_bytes, on_output=spec.on_output, nonce=nonce)
        runner_stderr = bytearray()
        usage = _Usage(slot.container.id)
        supervisor = _Supervisor(self, slot.container, usage)
        supervisor.stream = slot
        ai_socket = None
        if spec.ai_channel is not None:
            try:
                spec.ai_channel.start(slot.ai_dir or spec.ai_socket_dir)
            except OSError as exc:
                raise Unavailable(f"cannot open the run's AI channel: {exc}") from exc
            ai_socket = f"{SANDBOX_SOCKET_DIR}/{SOCKET_NAME}"
        elif spec.ai_socket_dir is not None:
            ai_socket = f"{SANDBOX_SOCKET_DIR}/{SOCKET_NAME}"
        first_run = slot.runs == 0
        self._register(spec.job_id, slot, supervisor)
        oom_before = usage.oom_kills()
        started = time.monotonic()
        request_sent = False
        try:
            try:
                slot.sock.sendall(spec.request(nonce, ai_socket))
                request_sent = True
            except OSError:
                if not first_run:
                    raise _Stale() from None
                # A container that died at once: its state below says why.
            # A container's first run of a handler that initialises once also imports main.py:
            # the runner bounds that by init_timeout_s, which the run's own timeout does not pay for.
            init_s = limits.init_timeout_s if first_run and spec.inits_once else 0
            self._read(slot, frames, runner_stderr, supervisor, usage, started + limits.timeout_s + init_s, first_run)
        finally:
            supervisor.end()
            self._unregister(spec.job_id)
        raw.duration_ms = int((time.monotonic() - started) * 1000)
        slot.runs += 1
        raw.add_frames(frames)
        if oom_before is not None:  # read before the container goes, whether or not the runner reported
            oom_after = usage.oom_kills()
            raw.oom_killed = raw.oom_killed or (oom_after is not None and oom_after > oom_before)
        raw.timed_out = supervisor.reason == "timeout"
        if frames.exit is not None and supervisor.reason is None and not frames.over_cap and not frames.garbled:
            # The runner reported the run and has cleaned up: the container lives on.
            raw.runner_stderr = bytes(runner_stderr[-RUNNER_STDERR_KEEP:])
            # A failed init, or a zygote that is gone or broke its protocol: the runner retires too.
            reusable = (frames.exit.get("clean") is True and raw.exit_signal is None and not raw.oom_killed
                        and not raw.memory_error and not slot.pending and raw.init_error is None
                        and not frames.exit.get("retire"))
            return raw, reusable
        # Killed, or it died: read how it ended before it goes.
        if first_run and raw.peak_memory_bytes is None and usage.peak_memory_bytes is not None:
            raw.peak_memory_bytes = usage.peak_memory_bytes  # its cgroup saw this run only
            raw.cpu_time_ms = raw.cpu_time_ms if usage.cpu_ns is None else usage.cpu_ns // 1_000_000
        try:
            state = self._final_state(slot.container)
        except EngineUnavailable as exc:
            if not request_sent:
                raise  # nothing of the run started: the caller may run it again
            # The engine went away during the run: what it had printed is all there is.
            raw.engine_lost = True
            runner_stderr += f"\n[nanogrid] {exc}".encode()
            raw.runner_stderr = bytes(runner_stderr[-RUNNER_STDERR_KEEP:])
            return raw, False
        if state is None:
            runner_stderr += b"\n[nanogrid] the container was removed while the run was in progress"
        elif state.get("Running"):
            runner_stderr += b"\n[nanogrid] the container did not stop when killed"
        else:
            raw.runner_exit_code = state["ExitCode"]
            raw.oom_killed = raw.oom_killed or bool(state.get("OOMKilled"))
        raw.runner_stderr = bytes(runner_stderr[-RUNNER_STDERR_KEEP:])
        if (not raw.oom_killed and frames.exit is None and supervisor.reason is None
                and raw.runner_exit_code == SIGKILL_EXIT_CODE and usage.peak_memory_bytes is not None
                and usage.peak_memory_bytes * 4 >= limits.memory_mb * MiB * 3):
            # gVisor tells Docker of no OOM kill, and out of memory its sandbox may die whole,
            # runner and all, before the cgroup's peak (sampled, and gVisor's own kernel in it)
            # shows the limit: a runner SIGKILLed without a report after the container used three
            # quarters of its memory was killed for memory (seen here at 52 and 57 MiB of 64).
            raw.oom_killed = True
        # A SIGKILL this run did not send, with no OOM and no exit report from the runner: a
        # cancellation if kill(job_id) was called for it from another process of this host (it
        # leaves a note first), else something else killed the runner (the function's own code,
        # the engine stopping, someone on the host), which is not.
        killed = (supervisor.reason is None and frames.exit is None and not raw.oom_killed
                  and raw.runner_exit_code == SIGKILL_EXIT_CODE)
        raw.cancelled = supervisor.reason == "cancel" or (killed and self._cancel_noted(spec.job_id))
        raw.interrupted = supervisor.reason == "shutdown"
        return raw, False

    def _read(self, slot: Slot, frames: FrameReader, runner_stderr: bytearray, supervisor: "_Supervisor",
              usage: _Usage, deadline: float, first_run: bool) -> None:
        """Read the run's frames until its exit frame or the end of the stream; enforce the deadline."""
        sock, demux = slot.sock, _Demux(slot.pending)
        while frames.exit is None:
            now = time.monotonic()
            if now >= deadline:
                supervisor.kill("timeout")
            if supervisor.killed_at is not None:
                if now >= supervisor.killed_at + KILL_GRACE_S:
                    supervisor._escalate()
                    return
                wait = SAMPLE_S
            else:
                wait = min(SAMPLE_S, max(deadline - now, 0.001))
            try:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                data = sock.recv(READ_CHUNK) if poller.poll(wait * 1000) else None
            except (OSError, ValueError):  # cut by the escalation, or by dockerd
                return
            if data is None:
                if first_run:
                    usage.sample()  # the cgroup's figures: only a container's first run has them to itself
                continue
            if not data:
                return
            for kind, payload in demux.feed(data):
                if kind == MUX_STDOUT:
                    frames.feed(payload)
                    if frames.over_cap:
                        supervisor.kill("output")
                    elif frames.garbled:
                        supervisor.kill("garbled")
                elif kind == MUX_STDERR:
                    runner_stderr += payload
                    del runner_stderr[:-RUNNER_STDERR_KEEP]
                else:
                    frames.garbled = True
                    supervisor.kill("garbled")
        if frames.buffer or slot.pending:
            frames.garbled = True  # bytes after the exit frame: the stream is not what it should be

    # -- who runs what, for kill() from any process ---------------------------------------------

    def _register(self, job_id: str, slot: Slot, supervisor: "_Supervisor") -> None:
        self._running[job_id] = supervisor
        if SAFE_JOB_ID.match(job_id) and LABEL_JOB not in (slot.container.labels or {}):
            record = f"{slot.container.id} {os.getpid()}\n"
            try:
                try:
                    (_private_dir(self.state_dir / "jobs") / job_id).write_text(record)
                except FileNotFoundError:  # the last other worker process of the installation removed it just now
                    (_private_dir(self.state_dir / "jobs") / job_id).write_text(record)
            except OSError as exc:
                log.warning("cannot record which container runs %s: %s", job_id, exc)

    def _unregister(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        if SAFE_JOB_ID.match(job_id):
            try:
                (self.state_dir / "jobs" / job_id).unlink(missing_ok=True)
            except OSError:
                pass

    def _note_cancel(self, job_id: str) -> None:
        if SAFE_JOB_ID.match(job_id):
            try:
                (_private_dir(self.state_dir / "cancelled") / job_id).touch()
            except OSError as exc:
                log.warning("cannot note the cancel of %s: %s", job_id, exc)

    def _cancel_noted(self, job_id: str) -> bool:
        """Whether another process of this host cancelled job_id (the note is used up)."""
        if not SAFE_JOB_ID.match(job_id):
            return False
        try:
            (self.state_dir / "cancelled" / job_id).unlink()
        except OSError:
            return False
        return True

    def running_container(self, job_id: str) -> str | None:
        """The id of the warm container running job_id on this host, if one does."""
        if not SAFE_JOB_ID.match(job_id):
            return None
        try:
            return (self.state_dir / "jobs" / job_id).read_text().split()[0]
        except (OSError, IndexError):
            return None

    def kill(self, job_id: str) -> bool:
        """Kill the container running job_id, from any process on this host; True if one was running.

        The container goes with the run (a warm one is not reused after a kill)."""
        supervisor = self._running.get(job_id) if self._pool_pid == os.getpid() else None
        if supervisor is not None:
            supervisor.kill("cancel")
        else:
            self._note_cancel(job_id)  # the process running it reads the note when its run is killed
        try:
            running = [s["Id"] for s in self.client.api.containers(filters={"label": f"{LABEL_JOB}={job_id}"})]
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot list containers: {exc}") from exc
        warm = self.running_container(job_id) if supervisor is None else None
        if warm is not None:  # only a warm container of this installation, whatever the record says
            try:
                labels = self.client.api.inspect_container(warm)["Config"]["Labels"] or {}
            except docker.errors.NotFound:
                labels = {}
            except DOCKER_ERRORS as exc:
                raise Unavailable(f"cannot inspect container {warm[:12]}: {exc}") from exc
            if LABEL_WARM not in labels or labels.get(LABEL_INSTANCE) != self.instance:
                warm = None
        for container_id in running + ([warm] if warm else []):
            try:
                self.client.api.kill(container_id)
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):  # already gone or already stopped
                    raise Unavailable(f"cannot kill container {container_id[:12]}: {exc}") from exc
        return bool(running) or supervisor is not None or warm is not None

    # -- clean-up ----------------------------------------------------------------------------------

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Remove leftover containers of this installation (nanogrid.sandbox.janitor)."""
        return ContainerJanitor(self.client, self.instance, self.state_dir).remove(job_ids, keep)

    def _discard(self, slot: Slot) -> None:
        """Remove a container for good: its stream, the container, its AI folder."""
        slot.close()
        self._remove(slot.container)
        if slot.ai_dir is not None:
            shutil.rmtree(slot.ai_dir, ignore_errors=True)
        if slot.owns_code_dir:
            shutil.rmtree(slot.code_dir, ignore_errors=True)

    def _new_folder(self, kind: str) -> Path:
        """A new folder of this process (<pid>-..., which the janitor removes once the process is
        gone) under the state folder's `kind` ("ai", "stem"), readable by the sandbox's user."""
        try:
            made = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_private_dir(self.state_dir / kind))
        except FileNotFoundError:  # the last other worker process of the installation removed it just now
            made = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=_private_dir(self.state_dir / kind))
        Path(made).chmod(0o755)
        return Path(made)

    def _close(self, pool: WarmPool) -> None:
        """At this process's end: its warm containers go, and the installation's state folder with
        them once no other process of it has anything there (a folder in use is not empty)."""
        pool.close()
        for folder in (self.state_dir / "jobs", self.state_dir / "ai", self.state_dir / "stem", self.state_dir / "cancelled",
                       self.state_dir):
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _create(self, spec: RunSpec, ai_dir: Path | None = None, warm: bool = False):
        """A container serving spec's code: for one job (labelled with it), or warm for many."""
        limits = spec.limits
        labels = {LABEL_FUNCTION: spec.function_id, LABEL_VERSION: str(spec.version), LABEL_WORKER: self.worker_id,
                  LABEL_INSTANCE: self.instance}
        labels.update({LABEL_WARM: _owner()} if warm else {LABEL_JOB: spec.job_id})
        if not spec.function_id:  # a stem cell: labels cannot change, so its function is never named on it
            labels.update({LABEL_FUNCTION: "", LABEL_VERSION: "", LABEL_STEM: "1"})
        options = dict(
            image=self.settings.runtime_image,
            command=RUNNER_COMMAND + (["--lib", LAYER_MOUNT] if spec.layer_dir is not None else []),
            user=SANDBOX_USER,
            working_dir=CODE_MOUNT,
            environment={"HOME": "/tmp", "LANG": "C.UTF-8"},
            labels=labels,
            mounts=[Mount(target=CODE_MOUNT, source=str(Path(spec.code_dir).resolve()), type="bind", read_only=True),
                    *([Mount(target=LAYER_MOUNT, source=str(Path(spec.layer_dir).resolve()), type="bind",
                             read_only=True)] if spec.layer_dir is not None else [])],
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777",
                   SECRETS_MOUNT: "rw,noexec,nosuid,nodev,size=1m,mode=0700,uid=65534,gid=65534"},
            # Docker's own /dev/shm (noexec, nosuid, nodev; POSIX shared memory, multiprocessing's
            # locks) is the other writable place: the same size as /tmp instead of Docker's 64 MiB.
            shm_size=limits.tmpfs_mb * MiB,
            mem_limit=limits.memory_mb * MiB,
            memswap_limit=limits.memory_mb * MiB,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            ulimits=[
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="fsize", soft=limits.file_size_mb * MiB, hard=limits.file_size_mb * MiB),
                Ulimit(name="core", soft=0, hard=0),
            ],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            # No init: the runner is PID 1, so no other process of the container holds its stdin and
            # stdout (an init would, and the user code, same uid, could open them through /proc and
            # talk to the worker in the runner's name). The runner reaps every process itself.
            init=False,
            # With detach=False, docker-py also sets StdinOnce: when the worker's end of the attached
            # stream closes (the worker died), dockerd closes the runner's stdin and the runner exits.
            stdin_open=True,
            detach=False,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            auto_remove=False,  # its exit state is read after an abnormal end; then it is removed
        )
        options["runtime"] = self.settings.docker_runtime
        if self.settings.docker_runtime == "runsc":
            options["pids_limit"] = GVISOR_HOST_PIDS_BASE + GVISOR_HOST_PIDS_PER_PROCESS * limits.pids
            options["ulimits"].append(Ulimit(name="nproc", soft=limits.pids, hard=limits.pids))
        ai_mount = ai_dir or spec.ai_socket_dir
        if ai_mount is not None:
            # The AI channel's directory: it holds only the channel's Unix socket, read-only.
            # Connecting to a socket needs no write access to the mount, and the network stays "none".
            options["mounts"].append(Mount(target=SANDBOX_SOCKET_DIR, source=str(Path(ai_mount).resolve()),
                                           type="bind", read_only=True))
        try:
            return self.client.containers.create(**options)
        except docker.errors.ImageNotFound as exc:
            raise Unavailable(f"the runtime image {self.settings.runtime_image} does not exist; {BUILD_HINT}") from exc
        except DOCKER_ERRORS as exc:
            raise _engine_error("cannot create the sandbox container", exc) from exc

    def _final_state(self, container) -> dict | None:
        """The container's State once it has exited (exit code, OOMKilled), or None if it is gone;
        EngineUnavailable when dockerd cannot be reached.

        container.wait(timeout=) bounds only the HTTP call, not the container: when it expires
        the container is killed and waited for once more; if it still runs after that, its State
        says so and run() force-removes it. Never more than 2 * EXIT_WAIT_S.
        """
        for attempt in range(2):
            try:
                container.wait(timeout=EXIT_WAIT_S)
                break
            except docker.errors.NotFound:
                return None
            except RequestsConnectionError as exc:
                raise _engine_error("cannot wait for the sandbox container", exc) from exc
            except RequestException:
                if attempt:
                    log.warning("container %s still running after a kill; it will be force-removed", container.id[:12])
                    break
                log.warning("container %s still running after its output ended; killing it", container.id[:12])
                try:
                    container.kill()
                except DOCKER_ERRORS:
                    pass  # exited meanwhile (409), or dockerd is struggling: the second wait tells
            except DOCKER_ERRORS as exc:
                raise _engine_error("cannot wait for the sandbox container", exc) from exc
        try:
            container.reload()
        except docker.errors.NotFound:
            return None
        except DOCKER_ERRORS as exc:
            raise _engine_error("cannot inspect the sandbox container", exc) from exc
        return container.attrs["State"]

    def _remove(self, container) -> None:
        """Force-remove the container; if a removal is already under way (the supervisor's
        escalation), wait for it, so a finished run never leaves its container behind."""
        deadline = time.monotonic() + EXIT_WAIT_S
        while True:
            try:
                container.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:
                    log.warning("cannot remove container %s (the reaper will retry): %s", container.id[:12], exc)
                    return
                time.sleep(0.1)  # "removal already in progress"
            except DOCKER_ERRORS as exc:
                # The engine is away: this process removes it once the engine answers again.
                log.warning("cannot remove container %s (retried when the engine answers): %s",
                            container.id[:12], exc)
                self._leftovers.add(container.id)
                return

    def _remove_leftovers(self) -> None:
        """Remove the containers that could not be removed while the engine was away."""
        for container_id in list(self._leftovers):
            try:
                self.client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except (*DOCKER_ERRORS, Unavailable):
                return  # still away: the next maintenance pass tries again
            self._leftovers.discard(container_id)
            log.info("removed container %s, left behind while the engine was away", container_id[:12])

