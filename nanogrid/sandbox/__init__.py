"""Sandboxes: where user code runs, and how what happened there becomes a job outcome.

A sandbox backend only hands a run's request to the in-sandbox runner
(nanogrid/sandbox/runtime/runner.py), which serves one function version's code directory, enforces
the wall-clock deadline and the output cap, and reports the raw facts in a `RawRun`. `classify` turns those facts into the one terminal state of the job,
so the Docker and process backends cannot disagree about what a timeout or an OOM means.
"""

from __future__ import annotations

import hashlib
import json
import os
import math
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol
from urllib.parse import urlparse

from nanogrid.config import Settings

LABEL_JOB = "nanogrid.job"
LABEL_FUNCTION = "nanogrid.function"
LABEL_WORKER = "nanogrid.worker"
LABEL_INSTANCE = "nanogrid.instance"
# A warm container serves many jobs, so it carries no job label: this one names its owner, the
# worker process (host:pid) that keeps it, and LABEL_VERSION the function version it serves.
LABEL_WARM = "nanogrid.warm"
LABEL_VERSION = "nanogrid.version"
RUNTIME_DIR = Path(__file__).parent / "runtime"

# Frames the runner writes on its stdout: one type byte, a 4-byte big-endian length, the payload.
# Requests to the runner (on its stdin) have the same header with the type REQUEST.
FRAME_HEADER = struct.Struct(">cI")
STDOUT, STDERR, RESULT, EXIT = b"o", b"e", b"r", b"x"
REQUEST = b"q"


def instance_id(settings: Settings) -> str:
    """Which installation a sandbox belongs to: the Redis that holds its jobs' leases.

    The reaper keeps the sandboxes of jobs that Redis lists as running and removes the others;
    two installations (or test stacks) sharing one dockerd must not remove each other's.
    """
    url = urlparse(settings.redis_url)
    where = f"{url.hostname}:{url.port or 6379}{url.path or '/0'}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


class LimitError(ValueError):
    """A requested limit is malformed, below the floor, or above the installation's ceiling."""


# The smallest values a run can work with: the runner itself needs a few processes, files and MB.
LIMIT_FLOORS = {"timeout_s": 0.1, "memory_mb": 16, "cpus": 0.05, "pids": 8, "open_files": 32, "file_size_mb": 1,
                "tmpfs_mb": 1, "output_bytes": 1024}
FRACTIONAL_LIMITS = frozenset({"timeout_s", "cpus"})


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    memory_mb: int
    cpus: float
    pids: int
    open_files: int
    file_size_mb: int
    tmpfs_mb: int
    output_bytes: int

    @classmethod
    def resolve(cls, settings: Settings, requested: dict | None = None) -> "Limits":
        """Defaults from settings; a function may lower a limit but never raise it past the ceiling."""
        requested = requested or {}
        values = {name: getattr(settings, name).clamp(requested.get(name)) for name in cls.__dataclass_fields__}
        return cls(**{n: (v if n in FRACTIONAL_LIMITS else int(v)) for n, v in values.items()})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    @classmethod
    def check(cls, settings: Settings, requested) -> dict:
        """Validate limits a function or a run asks for: {name: value}, each within floor..ceiling.

        Returns them normalised (whole numbers where the limit is one); raises LimitError with a
        message fit for the API's 400 answer.
        """
        if requested is None:
            return {}
        if not isinstance(requested, dict):
            raise LimitError(f"limits must be an object with any of: {', '.join(cls.names())}")
        unknown = sorted(set(requested) - set(cls.names()))
        if unknown:
            raise LimitError(f"unknown limit(s): {', '.join(unknown)}; known: {', '.join(cls.names())}")
        checked = {}
        for name, value in requested.items():
            if value is None:
                continue
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise LimitError(f"{name} must be a number") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise LimitError(f"{name} must be a number")
            if name not in FRACTIONAL_LIMITS:
                if value != int(value):
                    raise LimitError(f"{name} must be a whole number")
                value = int(value)
            floor, ceiling = LIMIT_FLOORS[name], getattr(settings, name).ceiling
            if value < floor:
                raise LimitError(f"{name} must be at least {floor:g}")
            if value > ceiling:
                raise LimitError(f"{name} may be at most {ceiling:g} on this installation (GET /limits)")
            checked[name] = value
        return checked


@dataclass(frozen=True)
class RunSpec:
    job_id: str
    function_id: str
    code_dir: Path  # one function version's extracted bundle (main.py, ...), shared by its runs, read-only
    handler: str | None  # None: run main.py as a script
    limits: Limits
    # An AI channel the caller has already opened, to mount as it is (Docker: a single-use container).
    ai_socket_dir: Path | None = None
    version: int = 0
    code_sha: str = ""  # the bundle's sha256: part of what a warm container is for
    tenant: str = ""
    env: Mapping[str, str] = field(default_factory=dict)  # the function's environment variables
    input_json: str = "null"  # the event, as JSON text: the user process's stdin
    # This run's AI channel (nanogrid.ai.channel.Channel), not yet started: the sandbox opens it
    # where the run can reach it (Docker: the container's own AI directory).
    ai_channel: Any = None
    ai_timeout_s: float = 0.0

    def request(self, ai_socket: str | None = None) -> bytes:
        """The runner's request frame for this run; the context's deadline starts now."""
        spec = {"handler": self.handler, "env": dict(self.env),
                "context": {"job_id": self.job_id, "function_id": self.function_id,
                            "function_version": self.version, "deadline": time.time() + self.limits.timeout_s}}
        if ai_socket is not None:
            spec["ai"] = {"socket": ai_socket, "timeout_s": self.ai_timeout_s}
        return request_frame(spec, self.input_json)


def request_frame(spec: dict, input_json: str) -> bytes:
    payload = json.dumps({"spec": spec, "input": input_json}).encode()
    return FRAME_HEADER.pack(REQUEST, len(payload)) + payload


@dataclass
class RawRun:
    """What the sandbox observed, before any interpretation."""

    stdout: bytes = b""
    stderr: bytes = b""
    result: dict | None = None  # the runner's RESULT frame, handler mode only
    exit_code: int | None = None  # of the user process, from the runner's EXIT frame
    exit_signal: int | None = None
    runner_exit_code: int | None = None  # of the runner (container's main process)
    runner_stderr: bytes = b""
    timed_out: bool = False
    output_truncated: bool = False
    oom_killed: bool = False
    memory_error: bool = False  # the user process died of an uncaught MemoryError (rlimit, no cgroup)
    cancelled: bool = False
    duration_ms: int = 0
    peak_memory_bytes: int | None = None
    cpu_time_ms: int | None = None
    garbled: bool = False  # the frame stream broke (something wrote into the runner's own stdout)


@dataclass
class Outcome:
    status: str  # SUCCESS | FAILED
    result: Any = None
    error: dict | None = None
    exit_code: int | None = None
    extra: dict = field(default_factory=dict)


class Sandbox(Protocol):
    kind: str
    isolated: bool

    def run(self, spec: RunSpec) -> RawRun: ...

    def kill(self, job_id: str) -> bool: ...

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Remove leftover sandboxes labelled with a job: those in job_ids, or all but keep (the
        reaper's sweep, which also removes warm sandboxes whose owner is gone)."""
        ...


class FrameReader:
    """Parses the runner's frame stream incrementally, enforcing the output cap.

    User output beyond the cap is dropped (the head is kept) and `over_cap` is set so the
    caller kills the sandbox; nothing here buffers more than the cap plus one frame. A stream that
    stops being frames sets `garbled`: everything after it is ignored and the caller kills the run.
    """

    def __init__(self, output_cap: int, result_cap: int = 8 * 1024 * 1024):
        self.output_cap = output_cap
        self.result_cap = result_cap
        self.buffer = bytearray()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.result: dict | None = None
        self.exit: dict | None = None
        self.output_seen = 0
        self.over_cap = False
        self.garbled = False

    def feed(self, data: bytes) -> None:
        if self.garbled:
            return
        self.buffer += data
        while len(self.buffer) >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(self.buffer)
            if kind not in (STDOUT, STDERR, RESULT, EXIT) or (kind in (RESULT, EXIT) and length > self.result_cap):
                self.garbled = True
                self.buffer.clear()
                return
            if kind in (STDOUT, STDERR) and length > 1024 * 1024:
                self.garbled = True
                self.buffer.clear()
                return
            end = FRAME_HEADER.size + length
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[FRAME_HEADER.size:end])
            del self.buffer[:end]
            self._frame(kind, payload)

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if kind in (STDOUT, STDERR):
            room = self.output_cap - self.output_seen
            self.output_seen += len(payload)
            target = self.stdout if kind == STDOUT else self.stderr
            target += payload[: max(room, 0)]
            if self.output_seen > self.output_cap:
                self.over_cap = True
        elif kind == RESULT:
            # Whatever the user code wrote into its result channel: it may be anything.
            try:
                value = json.loads(payload)
                if b"\\ud" in payload.lower():
                    value = _without_lone_surrogates(value)
            except (ValueError, RecursionError):
                value = {"ok": False, "error": "invalid_result", "message": "the result is not valid JSON"}
            self.result = value if isinstance(value, dict) else {"ok": False, "error": "invalid_result",
                                                                  "message": "the result is not a JSON object"}
        else:
            try:
                self.exit = json.loads(payload)
            except (ValueError, RecursionError):
                self.garbled = True

    def fill(self, raw: RawRun) -> None:
        raw.stdout, raw.stderr, raw.result = bytes(self.stdout), bytes(self.stderr), self.result
        raw.output_truncated = raw.output_truncated or self.over_cap
        if self.exit is not None:
            raw.exit_code = self.exit.get("exit_code")
            raw.exit_signal = self.exit.get("signal")
            raw.memory_error = bool(self.exit.get("memory_error"))
            # The sandbox's cgroup counted an OOM kill during the run (the runner reads it).
            raw.oom_killed = raw.oom_killed or self.exit.get("oom_kill") is True
            if isinstance(self.exit.get("max_rss_kb"), int):
                raw.peak_memory_bytes = self.exit["max_rss_kb"] * 1024
            if isinstance(self.exit.get("cpu_ms"), int):
                raw.cpu_time_ms = self.exit["cpu_ms"]
        raw.garbled = raw.garbled or self.garbled


def _without_lone_surrogates(value):
    """JSON may escape half a surrogate pair, which no UTF-8 store accepts: make those U+FFFD."""
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


# The failures a runner's result may report; anything else a result claims is an invalid result.
RESULT_ERRORS = frozenset({"invalid_result", "memory_limit"})


def classify(raw: RawRun, limits: Limits) -> Outcome:
    """The single mapping from what the sandbox saw to the job's terminal state and error type."""

    def failed(error_type: str, message: str, **extra) -> Outcome:
        # The signal that ended the run is part of the error the client sees; exit_code is a job field.
        error = {"type": error_type, "message": message, **({"signal": extra["signal"]} if "signal" in extra else {})}
        return Outcome("FAILED", error=error, exit_code=raw.exit_code, extra=extra)

    if raw.cancelled:
        return failed("cancelled", "the run was cancelled")
    if raw.timed_out:
        return failed("timeout", f"the run exceeded its timeout of {limits.timeout_s:g} s and was killed")
    if raw.output_truncated:
        return failed(
            "output_limit",
            f"stdout and stderr together exceeded {limits.output_bytes} bytes; the run was killed "
            "and the output truncated",
            truncated=True,
        )
    if raw.oom_killed or raw.memory_error:
        return failed("memory_limit", f"the run exceeded its memory limit of {limits.memory_mb} MB")
    if raw.garbled:
        return failed("runtime_error", "the run wrote into the sandbox's own output stream, which no longer made "
                                       "sense; the run was stopped")
    if raw.exit_signal == signal.SIGXFSZ:
        return failed("file_limit", f"the run wrote a file larger than {limits.file_size_mb} MB")
    if raw.exit_code is None and raw.exit_signal is None and (raw.runner_exit_code or 0) > 128:
        # Nobody on our side killed the runner (deadline, output cap, cancel and OOM are handled
        # above): the function's own code did (it runs as the same user), or someone on the host.
        number = raw.runner_exit_code - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        return failed("runtime_error", f"the sandbox's runner was killed by signal {name} before it could report "
                                       "the run's exit (not by NanoGrid: by the function's own code, or on the host)",
                      signal=number)
    if raw.exit_code is None and raw.exit_signal is None:
        detail = raw.runner_stderr.decode("utf-8", "replace").strip()[-500:]
        return failed("sandbox_error", "the sandbox ended without reporting the run's exit" + (f": {detail}" if detail else ""))
    if raw.exit_signal is not None:
        name = signal.Signals(raw.exit_signal).name if raw.exit_signal in signal.Signals._value2member_map_ else str(raw.exit_signal)
        return failed("runtime_error", f"the function was killed by signal {name}", signal=raw.exit_signal)
    if raw.exit_code != 0:
        last_line = next((line for line in reversed(raw.stderr.decode("utf-8", "replace").splitlines()) if line.strip()), "")
        detail = f": {last_line.strip()[:300]}" if last_line else ""
        return failed("runtime_error", f"the function exited with code {raw.exit_code}{detail}")
    if raw.result is not None and raw.result.get("ok") is not True:
        error_type = raw.result.get("error") if raw.result.get("error") in RESULT_ERRORS else "invalid_result"
        return failed(error_type, str(raw.result.get("message", "invalid result"))[:1000])
    value = raw.result.get("value") if raw.result else None
    return Outcome("SUCCESS", result=value, exit_code=raw.exit_code)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
