"""Sandboxes: where user code runs, and what a run looked like from outside.

A sandbox backend (Docker, or the non-isolating process backend) hands a run's request to the
in-sandbox runner (runtime/runner.py), which serves one function version's code directory, and
reports the raw facts of the run in a `RawRun`: output, result frame, exit status, whether the
deadline, the output cap, a kill or the kernel ended it. What those facts mean for the job is
decided above the sandboxes, in one place (nanogrid.outcomes), so the backends cannot disagree
about what a timeout or an OOM means.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlparse

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.limits import Limits
from nanogrid.sandbox.protocol import FrameReader, request_frame

LABEL_JOB = "nanogrid.job"
LABEL_FUNCTION = "nanogrid.function"
LABEL_WORKER = "nanogrid.worker"
LABEL_INSTANCE = "nanogrid.instance"
# A warm container serves many jobs, so it carries no job label: this one names its owner, the
# worker process (host:pid) that keeps it, and LABEL_VERSION the function version it serves.
LABEL_WARM = "nanogrid.warm"
LABEL_VERSION = "nanogrid.version"
# A container started as a stem cell (warm.py): made before any function was known, it names none.
LABEL_STEM = "nanogrid.stem"
RUNTIME_DIR = Path(__file__).parent / "runtime"


class EngineUnavailable(Unavailable):
    """The sandbox engine (dockerd) does not answer: nothing of the run was started."""


def instance_id(settings: Settings) -> str:
    """Which installation a sandbox belongs to: NANOGRID_INSTANCE_ID, else the Redis that holds
    its jobs (`nanogrid dev` keeps an id in its data directory, since its Redis port changes).

    The reaper keeps the sandboxes of jobs that are running and removes this installation's others;
    two installations (or test stacks) sharing one dockerd must not remove each other's.
    """
    if settings.instance_id:
        return hashlib.sha256(settings.instance_id.encode()).hexdigest()[:16]
    url = urlparse(settings.redis_url)
    where = f"{url.hostname}:{url.port or 6379}{url.path or '/0'}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


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
    # Sees the run's output as it arrives (FrameReader's on_output): the live event stream.
    on_output: Callable[[str, object], None] | None = None
    attempt: int = 1  # which attempt of the job this run is (the function's retry policy)
    # Installed third-party packages for the run (a pip --target tree), read-only; on the import
    # path right after the code (Docker: mounted at /opt/layer).
    layer_dir: Path | None = None
    # The function's secrets for this run ({NAME: value}): files in the sandbox's secrets folder,
    # never environment variables; the runner takes them out of the spec before anything else sees it.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Handler mode: "once" imports main.py once per sandbox (in the runner's zygote) and forks every
    # run from that state; "per_run" imports it in every run. Script mode always runs per run.
    init: str = "once"

    @property
    def inits_once(self) -> bool:
        return self.handler is not None and self.init != "per_run"

    def request(self, nonce: bytes, ai_socket: str | None = None) -> bytes:
        """The runner's request (and nonce) frames for this run; the context's deadline starts now."""
        spec = {"handler": self.handler, "env": dict(self.env),
                "context": {"job_id": self.job_id, "function_id": self.function_id,
                            "function_version": self.version, "attempt": self.attempt,
                            "deadline": time.time() + self.limits.timeout_s},
                "init": self.init, "init_timeout_s": self.limits.init_timeout_s}
        if ai_socket is not None:
            spec["ai"] = {"socket": ai_socket, "timeout_s": self.ai_timeout_s}
        if self.secrets:
            spec["secrets"] = dict(self.secrets)
        return request_frame(spec, self.input_json, nonce)


@dataclass
class RawRun:
    """What the sandbox observed, before any interpretation."""

    stdout: bytes = b""
    stderr: bytes = b""
    result: dict | None = None  # the runner's RESULT frame, handler mode only
    items: list | None = None  # what a streaming handler yielded, in order
    exit_code: int | None = None  # of the user process, from the runner's EXIT frame
    exit_signal: int | None = None
    runner_exit_code: int | None = None  # of the runner (container's main process)
    runner_stderr: bytes = b""
    timed_out: bool = False
    output_truncated: bool = False
    oom_killed: bool = False
    memory_error: bool = False  # the user process died of an uncaught MemoryError (rlimit, no cgroup)
    cancelled: bool = False
    interrupted: bool = False  # stopped because the worker is shutting down
    engine_lost: bool = False  # the sandbox engine stopped answering while the run was in progress
    duration_ms: int = 0
    peak_memory_bytes: int | None = None
    cpu_time_ms: int | None = None
    garbled: bool = False  # the frame stream broke (something wrote into the runner's own stdout)
    # main.py's import (init once) failed: "exception", "exit" (SystemExit), "died" or "timeout".
    init_error: str | None = None

    def add_frames(self, frames: FrameReader) -> None:
        """What the runner's frames reported: output, result, and the user process's exit."""
        self.stdout, self.stderr, self.result = bytes(frames.stdout), bytes(frames.stderr), frames.result
        self.items = frames.items
        self.output_truncated = self.output_truncated or frames.over_cap
        exit_info = frames.exit
        if exit_info is not None:
            self.exit_code = exit_info.get("exit_code")
            self.exit_signal = exit_info.get("signal")
            self.memory_error = bool(exit_info.get("memory_error"))
            # The sandbox's cgroup counted an OOM kill during the run (the runner reads it).
            self.oom_killed = self.oom_killed or exit_info.get("oom_kill") is True
            if isinstance(exit_info.get("max_rss_kb"), int):
                self.peak_memory_bytes = exit_info["max_rss_kb"] * 1024
            if isinstance(exit_info.get("cpu_ms"), int):
                self.cpu_time_ms = exit_info["cpu_ms"]
            if exit_info.get("init_error"):
                self.init_error = str(exit_info["init_error"])
        self.garbled = self.garbled or frames.garbled


class Sandbox(Protocol):
    kind: str
    isolated: bool

    def run(self, spec: RunSpec) -> RawRun:
        """The run, start to end; EngineUnavailable when the engine refused it before it started."""
        ...

    def kill(self, job_id: str) -> bool: ...

    def interrupt(self) -> int:
        """Stop every run of this process because the worker is shutting down; how many."""
        ...

    def engine_ok(self) -> bool:
        """Whether the engine that makes sandboxes answers now (quickly: a heartbeat asks it)."""
        ...

    def check_runtime(self) -> None:
        """Unavailable, saying what to do, when the configured runtime cannot run sandboxes."""
        ...

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Remove leftover sandboxes labelled with a job: those in job_ids, or all but keep (the
        reaper's sweep, which also removes warm sandboxes whose owner is gone)."""
        ...
