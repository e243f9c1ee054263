"""The process sandbox: the runner as a plain child process of the worker, for development.

It is NOT isolation: the code runs as the worker's user, sees its filesystem and network.
What it does give is the same runner, request and frames as the Docker sandbox (one run per
runner process: no warm pool), a minimal environment (no worker secrets), a private scratch
directory, kernel rlimits on memory, CPU time, open files and file size, and the same deadline and output cap, enforced by killing the runner's whole
process tree (the runner is a child subreaper, so even double-forked, setsid'd leftovers are in it).
"""

from __future__ import annotations

import functools
import math
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nanogrid.ai import SOCKET_NAME
from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.limits import Limits
from nanogrid.sandbox import RUNTIME_DIR, RawRun, RunSpec
from nanogrid.sandbox.protocol import FrameReader, new_nonce

MiB = 1024 * 1024
READ_CHUNK = 64 * 1024
RUNNER_STDERR_KEEP = 64 * 1024
# After its output ends the runner is exiting; longer than this means it is stuck.
EXIT_WAIT_S = 10


def _rlimits(limits: Limits, init_s: float = 0) -> list[tuple[int, int]]:
    """(resource, value) pairs, lowered to this process's hard limits so setrlimit cannot fail.
    init_s: the init's own time (init once: the one run also imports main.py, in its zygote)."""
    wanted = [
        (resource.RLIMIT_AS, limits.memory_mb * MiB),
        # A backstop only: the wall-clock deadline normally ends the run first.
        (resource.RLIMIT_CPU, math.ceil(limits.timeout_s + init_s) + 1),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * MiB),
        (resource.RLIMIT_CORE, 0),
    ]
    result = []
    for kind, value in wanted:
        hard = resource.getrlimit(kind)[1]
        result.append((kind, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return result


def _apply_rlimits(rlimits: list[tuple[int, int]]) -> None:
    # Runs in the child between fork and exec, where a lock held by another worker thread would
    # never be released: so it only calls setrlimit, with values computed beforehand.
    for kind, value in rlimits:
        resource.setrlimit(kind, (value, value))


def _descendants(root: int) -> list[int]:
    """Every live process below root, from one pass over /proc.

    runtime/runner.py reads /proc the same way (its `children`) in a copy of its own: it runs on
    the runtime image's bare Python and imports nothing of NanoGrid."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.append(pid)
            todo.append(pid)
    return found


def _kill_group(process: subprocess.Popen) -> None:
    """Kill every process below the runner, then its process group and the runner itself.

    The runner is a child subreaper: while it lives, leftovers that setsid'd out of its group are
    still its descendants, so they are killed first (a few passes, for processes still forking).
    """
    for _ in range(5):
        pids = _descendants(process.pid) if process.poll() is None else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not pids:
            break
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group has already exited


class _Run:
    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.stopped_for: str | None = None  # "cancel" or "shutdown"


class ProcessSandbox:
    kind = "process"
    isolated = False

    def __init__(self, settings: Settings, worker_id: str = ""):
        """Takes DockerSandbox's arguments so either can be built alike; neither is needed here."""
        self._running: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def run(self, spec: RunSpec) -> RawRun:
        """One runner process per run (no pool): the request on its stdin, which closes after the run."""
        limits = spec.limits
        ai_socket = None
        if spec.ai_channel is not None:
            try:
                spec.ai_channel.start()
            except OSError as exc:
                raise Unavailable(f"cannot open the run's AI channel: {exc}") from exc
            ai_socket = str(spec.ai_channel.socket_path)
        elif spec.ai_socket_dir is not None:
            ai_socket = str(Path(spec.ai_socket_dir) / SOCKET_NAME)
        with tempfile.TemporaryDirectory(prefix="nanogrid-run-") as scratch, \
                tempfile.TemporaryDirectory(prefix="nanogrid-secrets-") as secrets:
            environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": scratch, "TMPDIR": scratch,
                           # No /run/secrets outside a container: the run's secrets folder is named here.
                           "LANG": "C.UTF-8", "NANOGRID_SECRETS_DIR": secrets}
            started = time.monotonic()
            nonce = new_nonce()
            layer = ["--lib", str(spec.layer_dir)] if spec.layer_dir is not None else []
            init_s = limits.init_timeout_s if spec.inits_once else 0
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", str(RUNTIME_DIR / "runner.py"), str(spec.code_dir), *layer,
                 "--scrub", scratch, "--secrets", secrets],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=scratch, env=environment, start_new_session=True,
                preexec_fn=functools.partial(_apply_rlimits, _rlimits(limits, init_s)),
            )
            run = _Run(process)
            with self._lock:
                self._running[spec.job_id] = run
            try:
                try:
                    # Stdin stays open while the run lasts: its end tells the runner the worker is gone.
                    process.stdin.write(spec.request(nonce, ai_socket))
                    process.stdin.flush()
                except OSError:
                    pass  # the runner died at once: its exit status says why
                raw = self._supervise(process, spec, started, nonce)
            finally:
                # Also ends whatever the user code left running in the background.
                _kill_group(process)
                process.wait()
                for stream in (process.stdin, process.stdout, process.stderr):
                    try:
                        stream.close()
                    except OSError:
                        pass
                with self._lock:
                    self._running.pop(spec.job_id, None)
        raw.cancelled = run.stopped_for == "cancel"
        raw.interrupted = run.stopped_for == "shutdown"
        return raw

    def kill(self, job_id: str) -> bool:
        """Kill job_id's run if this process is running it; True if it was."""
        with self._lock:
            run = self._running.get(job_id)
        if run is None:
            return False
        run.stopped_for = "cancel"
        _kill_group(run.process)
        return True

    def interrupt(self) -> int:
        """Stop this process's runs for a shutdown: each ends with what it had printed."""
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            run.stopped_for = "shutdown"
            _kill_group(run.process)
        return len(runs)

    def engine_ok(self) -> bool:
        return True  # plain processes: nothing to ask

    def check_runtime(self) -> None:
        """Plain processes have no OCI runtime to check."""

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        return 0  # runs leave no containers; their processes die with the run

    def _supervise(self, process: subprocess.Popen, spec: RunSpec, started: float, nonce: bytes) -> RawRun:
        limits = spec.limits
        raw = RawRun()
        frames = FrameReader(limits.output_bytes, on_output=spec.on_output, nonce=nonce)
        runner_stderr = bytearray()
        # One run per runner: with init once it also imports main.py, bounded by init_timeout_s.
        deadline = started + limits.timeout_s + (limits.init_timeout_s if spec.inits_once else 0)
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            selector.register(process.stderr, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raw.timed_out = True
                    _kill_group(process)
                    break
                for key, _ in selector.select(remaining):
                    data = os.read(key.fd, READ_CHUNK)
                    if not data:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is process.stdout:
                        frames.feed(data)
                    else:
                        runner_stderr += data
                        del runner_stderr[:-RUNNER_STDERR_KEEP]
                if frames.over_cap or frames.garbled:
                    _kill_group(process)
                    break
                if frames.exit is not None and process.stdin is not None and not process.stdin.closed:
                    process.stdin.close()  # the run is over: the end of its requests ends the runner
        try:
            process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
        raw.duration_ms = int((time.monotonic() - started) * 1000)
        raw.add_frames(frames)
        # Reported like a container's exit code: 128 + signal number when killed by a signal.
        raw.runner_exit_code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        raw.runner_stderr = bytes(runner_stderr)
        return raw
