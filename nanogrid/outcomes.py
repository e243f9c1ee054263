"""What a run's raw facts mean for its job: the one terminal state and its error.

The sandboxes report what they saw (nanogrid.sandbox.RawRun); `classify` is the single mapping
from those facts to SUCCESS or FAILED with an error type, so the Docker and process backends
cannot disagree about what a timeout or an OOM means.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from nanogrid.jobs.records import ErrorType, Status, error
from nanogrid.limits import Limits
from nanogrid.sandbox import RawRun

# The failures a runner's result may report; anything else a result claims is an invalid result.
RESULT_ERRORS = frozenset({ErrorType.INVALID_RESULT, ErrorType.MEMORY_LIMIT})


@dataclass
class Outcome:
    status: Status
    result: Any = None
    error: dict | None = None
    exit_code: int | None = None


def _signal_name(number: int) -> str:
    return signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)


def classify(raw: RawRun, limits: Limits) -> Outcome:
    """The single mapping from what the sandbox saw to the job's terminal state and error type."""

    def failed(error_type: ErrorType, message: str, **details) -> Outcome:
        # The signal that ended the run is part of the error the client sees; exit_code is a job field.
        return Outcome(Status.FAILED, error=error(error_type, message, **details), exit_code=raw.exit_code)

    if raw.cancelled:
        return failed(ErrorType.CANCELLED, "the run was cancelled")
    if raw.interrupted:
        return failed(ErrorType.WORKER_LOST, "the worker was stopped while the run was in progress; the output it "
                                             "had printed is kept")
    if raw.engine_lost:
        return failed(ErrorType.SANDBOX_ERROR, "the sandbox engine (dockerd) stopped answering while the run was in "
                                               "progress; the output it had printed is kept")
    if raw.timed_out:
        return failed(ErrorType.TIMEOUT, f"the run exceeded its timeout of {limits.timeout_s:g} s and was killed")
    if raw.output_truncated:
        return failed(ErrorType.OUTPUT_LIMIT, f"stdout and stderr together exceeded {limits.output_bytes} bytes; "
                                              "the run was killed and the output truncated")
    if raw.oom_killed or raw.memory_error:
        return failed(ErrorType.MEMORY_LIMIT, f"the run exceeded its memory limit of {limits.memory_mb} MB")
    if raw.garbled:
        return failed(ErrorType.RUNTIME_ERROR, "the run wrote into the sandbox's own output stream, which no longer "
                                               "made sense; the run was stopped")
    if raw.init_error is not None:
        if raw.init_error == "timeout":
            return failed(ErrorType.INIT_ERROR, f"importing main.py took longer than its init timeout of "
                                                f"{limits.init_timeout_s:g} s and was stopped (init timed out)")
        how = {"exit": "main.py exited (SystemExit) while it was being imported",
               "died": "the process importing main.py died"}.get(raw.init_error, "importing main.py raised an exception")
        last_line = next((line for line in reversed(raw.stderr.decode("utf-8", "replace").splitlines())
                          if line.strip()), "")
        detail = f": {last_line.strip()[:300]}" if last_line and raw.init_error != "died" else ""
        if raw.init_error == "died" and raw.exit_signal is not None:
            detail = f" (signal {_signal_name(raw.exit_signal)})"
        return failed(ErrorType.INIT_ERROR, f"{how}; the handler did not run{detail}")
    if raw.exit_signal == signal.SIGXFSZ:
        return failed(ErrorType.FILE_LIMIT, f"the run wrote a file larger than {limits.file_size_mb} MB")
    if raw.exit_code is None and raw.exit_signal is None and (raw.runner_exit_code or 0) > 128:
        # Nobody on our side killed the runner (deadline, output cap, cancel and OOM are handled
        # above): the function's own code did (it runs as the same user), or someone on the host.
        number = raw.runner_exit_code - 128
        return failed(ErrorType.RUNTIME_ERROR, f"the sandbox's runner was killed by signal {_signal_name(number)} "
                                               "before it could report the run's exit (not by NanoGrid: by the "
                                               "function's own code, or on the host)", signal=number)
    if raw.exit_code is None and raw.exit_signal is None:
        detail = raw.runner_stderr.decode("utf-8", "replace").strip()[-500:]
        return failed(ErrorType.SANDBOX_ERROR,
                      "the sandbox ended without reporting the run's exit" + (f": {detail}" if detail else ""))
    if raw.exit_signal is not None:
        return failed(ErrorType.RUNTIME_ERROR, f"the function was killed by signal {_signal_name(raw.exit_signal)}",
                      signal=raw.exit_signal)
    if raw.exit_code != 0:
        last_line = next((line for line in reversed(raw.stderr.decode("utf-8", "replace").splitlines())
                          if line.strip()), "")
        detail = f": {last_line.strip()[:300]}" if last_line else ""
        return failed(ErrorType.RUNTIME_ERROR, f"the function exited with code {raw.exit_code}{detail}")
    if raw.result is not None and raw.result.get("ok") is not True:
        claimed = raw.result.get("error")
        error_type = ErrorType(claimed) if isinstance(claimed, str) and claimed in RESULT_ERRORS else ErrorType.INVALID_RESULT
        return failed(error_type, str(raw.result.get("message", "invalid result"))[:1000])
    if raw.result is not None and "streamed" in raw.result:  # a streaming handler: its items are the result
        return Outcome(Status.SUCCESS, result=raw.items or [], exit_code=raw.exit_code)
    value = raw.result.get("value") if raw.result else None
    return Outcome(Status.SUCCESS, result=value, exit_code=raw.exit_code)
