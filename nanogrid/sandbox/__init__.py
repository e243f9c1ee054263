"""Sandboxes: where user code runs, and how what happened there becomes a job outcome.

A sandbox backend only launches the in-sandbox runner (nanogrid/sandbox/runtime/runner.py) on a
prepared run directory, enforces the wall-clock deadline and the output cap, and reports the
raw facts in a `RawRun`. `classify` turns those facts into the one terminal state of the job,
so the Docker and process backends cannot disagree about what a timeout or an OOM means.
"""

from __future__ import annotations

import json
import signal
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nanogrid.config import Settings

LABEL_JOB = "nanogrid.job"
LABEL_FUNCTION = "nanogrid.function"
LABEL_WORKER = "nanogrid.worker"
RUN_FILE = ".nanogrid-run.json"
RUNTIME_DIR = Path(__file__).parent / "runtime"

# Frames the runner writes on its stdout: one type byte, a 4-byte big-endian length, the payload.
FRAME_HEADER = struct.Struct(">cI")
STDOUT, STDERR, RESULT, EXIT = b"o", b"e", b"r", b"x"


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
        return cls(**{n: (v if n in ("timeout_s", "cpus") else int(v)) for n, v in values.items()})


@dataclass(frozen=True)
class RunSpec:
    job_id: str
    function_id: str
    run_dir: Path  # holds main.py (and the rest of the bundle) plus RUN_FILE
    handler: str | None  # None: run main.py as a script
    limits: Limits


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

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Remove leftover sandboxes labelled with a job: those in job_ids, or all but keep."""
        ...


class FrameReader:
    """Parses the runner's frame stream incrementally, enforcing the output cap.

    User output beyond the cap is dropped (the head is kept) and `over_cap` is set so the
    caller kills the sandbox; nothing here buffers more than the cap plus one frame.
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
        else:
            try:
                value = json.loads(payload)
            except ValueError:
                self.garbled = True
                return
            if kind == RESULT:
                self.result = value
            else:
                self.exit = value

    def fill(self, raw: RawRun) -> None:
        raw.stdout, raw.stderr, raw.result = bytes(self.stdout), bytes(self.stderr), self.result
        raw.output_truncated = raw.output_truncated or self.over_cap
        if self.exit is not None:
            raw.exit_code = self.exit.get("exit_code")
            raw.exit_signal = self.exit.get("signal")
            raw.memory_error = bool(self.exit.get("memory_error"))


def classify(raw: RawRun, limits: Limits) -> Outcome:
    """The single mapping from what the sandbox saw to the job's terminal state and error type."""

    def failed(error_type: str, message: str, **extra) -> Outcome:
        return Outcome("FAILED", error={"type": error_type, "message": message}, exit_code=raw.exit_code, extra=extra)

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
    if raw.exit_signal == signal.SIGXFSZ:
        return failed("file_limit", f"the run wrote a file larger than {limits.file_size_mb} MB")
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
    if raw.result is not None and not raw.result.get("ok", False):
        return failed(raw.result.get("error", "invalid_result"), raw.result.get("message", "invalid result"))
    value = raw.result.get("value") if raw.result else None
    return Outcome("SUCCESS", result=value, exit_code=raw.exit_code)
