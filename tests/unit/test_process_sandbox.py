"""ProcessSandbox: the real runner as a child process, with rlimits, deadline and output cap.

What both backends promise is tested once for both in tests/sandbox/test_contract.py; here is what
only this one does: its CPU backstop and scratch directory, a function able to kill its runner (no
PID namespace), and the runner's serve mode driven directly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from nanogrid.config import Settings
from nanogrid.limits import Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import RUNTIME_DIR, RunSpec
from nanogrid.sandbox.protocol import FRAME_HEADER, FrameReader, new_nonce, request_frame
from nanogrid.sandbox.process import ProcessSandbox
from support.processes import running

LIMITS = Limits(timeout_s=10, memory_mb=256, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)


def write_code_dir(code_dir: Path, code: str) -> Path:
    """What the worker prepares: the extracted bundle (the run's request goes to the runner's stdin)."""
    code_dir.mkdir()
    (code_dir / "main.py").write_text(textwrap.dedent(code))
    return code_dir


@pytest.fixture
def sandbox() -> ProcessSandbox:
    return ProcessSandbox(Settings(), "test-worker")


@pytest.fixture
def prepare(tmp_path):
    def prepare(code: str, handler: str | None = None, event=None, **limit_changes) -> RunSpec:
        limits = dataclasses.replace(LIMITS, **limit_changes)
        job_id = f"test-{uuid.uuid4().hex[:12]}"
        return RunSpec(job_id, "fn-test", write_code_dir(tmp_path / job_id, code), handler, limits, version=1,
                       input_json=json.dumps(event if event is not None else {}))

    return prepare


@pytest.fixture
def run(sandbox, prepare):
    def run(code: str, handler: str | None = None, event=None, **limit_changes):
        spec = prepare(code, handler, event, **limit_changes)
        raw = sandbox.run(spec)
        return raw, classify(raw, spec.limits)

    return run


def test_kind():
    assert (ProcessSandbox.kind, ProcessSandbox.isolated) == ("process", False)


def test_the_cpu_backstop_and_a_private_scratch_directory(run):
    """Beyond the contract (tests/sandbox): the CPU rlimit backs the deadline up, and the run's
    scratch directory (its HOME) goes with it."""
    raw, outcome = run(
        """
        import os, resource
        def handler(event, context):
            return {"home": os.environ["HOME"], "cpu": resource.getrlimit(resource.RLIMIT_CPU)}
        """,
        handler="handler", timeout_s=2.5, init_timeout_s=1.5,
    )
    assert outcome.status == "SUCCESS", outcome
    # ceil(timeout + init timeout) + 1: the one run of the runner also imports main.py (init once)
    assert outcome.result["cpu"] == [5, 5]
    assert not os.path.exists(outcome.result["home"])


def test_remove_containers_has_nothing_to_remove(sandbox):
    assert sandbox.remove_containers(job_ids={"a"}) == 0
    assert sandbox.remove_containers(keep=set()) == 0


def test_a_function_that_kills_its_runner(run):
    raw, outcome = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert not raw.cancelled
    assert outcome.error["type"] == "runtime_error" and outcome.error["signal"] == 9, outcome


# -- the runner's serve mode, driven directly: what the Docker sandbox's warm containers rely on ------

REUSE_PROBE = """
import os, subprocess
COUNTER = []

def handler(event, context):
    COUNTER.append(1)
    scratch = os.environ["HOME"]
    seen = {"counter": len(COUNTER), "env": os.environ.get("LEFT_BEHIND"), "files": sorted(os.listdir(scratch)),
            "previous_alive": event["previous"] is not None and _alive(event["previous"])}
    os.environ["LEFT_BEHIND"] = "yes"
    os.makedirs(os.path.join(scratch, "dir/deeper"))
    open(os.path.join(scratch, "dir/deeper/file"), "w").write("x")
    os.chmod(os.path.join(scratch, "dir"), 0)  # even a directory the run locked itself out of goes
    seen["background"] = subprocess.Popen(["sleep", "600"], start_new_session=True).pid
    return seen

def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
"""


def start_runner(code_dir: Path, scratch: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-I", "-B", str(RUNTIME_DIR / "runner.py"), str(code_dir), "--scrub", str(scratch)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch,
        env={"PATH": os.environ["PATH"], "HOME": str(scratch), "LANG": "C.UTF-8"})


def serve(runner: subprocess.Popen, handler: str | None, event) -> FrameReader:
    spec = {"handler": handler, "env": {}, "context": {"job_id": "j", "function_id": "f", "function_version": 1,
                                                       "deadline": time.time() + 10}}
    nonce = new_nonce()
    runner.stdin.write(request_frame(spec, json.dumps(event), nonce))
    runner.stdin.flush()
    frames = FrameReader(64 * 1024, nonce=nonce)
    while frames.exit is None:
        data = os.read(runner.stdout.fileno(), 65536)
        assert data, runner.stderr.read()
        frames.feed(data)
    return frames


def test_the_runner_serves_runs_one_after_another_and_nothing_crosses_between_them(tmp_path):
    code_dir, scratch = write_code_dir(tmp_path / "code", REUSE_PROBE), tmp_path / "scratch"
    scratch.mkdir()
    runner = start_runner(code_dir, scratch)
    try:
        first = serve(runner, "handler", {"previous": None})
        second = serve(runner, "handler", {"previous": first.result["value"]["background"]})
        assert first.exit["clean"] is True and second.exit["clean"] is True, runner.stderr.read()
        for frames in (first, second):
            seen = frames.result["value"]
            assert (seen["counter"], seen["env"], seen["files"], seen["previous_alive"]) == (1, None, [], False)
        assert not running(second.result["value"]["background"]) and os.listdir(scratch) == []
    finally:
        runner.stdin.close()
    assert runner.wait(timeout=10) == 0  # the end of its requests ends the runner


def test_the_runner_kills_the_run_when_its_stdin_ends(tmp_path):
    code = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n"
    code_dir, scratch = write_code_dir(tmp_path / "code", code), tmp_path / "scratch"
    scratch.mkdir()
    runner = start_runner(code_dir, scratch)
    spec = {"handler": None, "env": {}, "context": {}}
    runner.stdin.write(request_frame(spec, "null", new_nonce()))
    runner.stdin.flush()
    frames = FrameReader(1024)
    while not frames.stdout:
        frames.feed(os.read(runner.stdout.fileno(), 65536))
    runner.stdin.close()  # the worker is gone
    assert runner.wait(timeout=10) == 3 and b"stdin ended during a run" in runner.stderr.read()
    assert not running(int(frames.stdout))


@pytest.mark.parametrize("data", [b"zzzzz", FRAME_HEADER.pack(b"q", 3) + b"{no", FRAME_HEADER.pack(b"q", 10) + b"{}"],
                         ids=["not-a-frame", "not-json", "cut-short"])
def test_the_runner_refuses_a_broken_request(tmp_path, data):
    code_dir, scratch = write_code_dir(tmp_path / "code", "print('never')\n"), tmp_path / "scratch"
    scratch.mkdir()
    runner = start_runner(code_dir, scratch)
    out, err = runner.communicate(data, timeout=10)
    assert runner.returncode == 2 and out == b"" and err.startswith(b"runner: "), err
