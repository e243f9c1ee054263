"""ProcessSandbox: the real runner as a child process, with rlimits, deadline and output cap."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
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


def test_handler_result(run):
    raw, outcome = run(
        "def handler(event, context):\n    return {'sum': event['a'] + event['b'], 'job': context.job_id}\n",
        handler="handler", event={"a": 2, "b": 3},
    )
    assert outcome.status == "SUCCESS", (outcome, raw.runner_stderr)
    assert outcome.result["sum"] == 5 and outcome.result["job"].startswith("test-")
    assert raw.runner_exit_code == 0 and raw.duration_ms > 0


def test_script_reads_input_from_stdin(run):
    raw, outcome = run("import json, sys\nprint('hello', json.load(sys.stdin)['name'])\n", event={"name": "grid"})
    assert outcome.status == "SUCCESS", outcome
    assert raw.stdout == b"hello grid\n"


def test_stdout_stderr_and_user_traceback(run):
    raw, outcome = run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise ValueError('boom')\n")
    assert outcome.error["type"] == "runtime_error" and outcome.exit_code == 1
    assert raw.stdout == b"out\n"
    stderr = raw.stderr.decode()
    assert stderr.startswith("err\n") and stderr.rstrip().endswith("ValueError: boom")
    assert "main.py\", line 4" in stderr
    assert "runner.py" not in stderr


def test_non_zero_exit(run):
    raw, outcome = run("import sys\nsys.exit(3)\n")
    assert raw.exit_code == 3 and outcome.error["type"] == "runtime_error"


@pytest.mark.parametrize("code", ["while True:\n    pass\n", "import time\ntime.sleep(600)\n"], ids=["busy", "sleep"])
def test_timeout_kills_the_process_group(run, code):
    started = time.monotonic()
    raw, outcome = run(code, timeout_s=1)
    assert raw.timed_out and outcome.error["type"] == "timeout"
    assert 1 <= time.monotonic() - started < 1 + 5


def test_memory_limit(run):
    raw, outcome = run("data = bytearray(1024 * 1024 * 1024)\n", memory_mb=256)
    assert raw.memory_error
    assert outcome.error["type"] == "memory_limit", outcome


def test_output_cap_keeps_the_head_and_kills(run):
    started = time.monotonic()
    raw, outcome = run(
        "import sys\nprint('HEAD')\nchunk = 'x' * (1024 * 1024)\nfor _ in range(50):\n    sys.stdout.write(chunk)\n",
        output_bytes=64 * 1024,
    )
    assert raw.output_truncated and outcome.error["type"] == "output_limit"
    assert raw.stdout.startswith(b"HEAD\nxxxx")
    assert len(raw.stdout) + len(raw.stderr) <= 64 * 1024
    assert time.monotonic() - started < 5


WRITE_100_MB = """
chunk = b"x" * (1024 * 1024)
with open("big", "wb") as f:
    for _ in range(100):
        f.write(chunk)
"""


def test_file_size_limit(run):
    raw, outcome = run("import os\nos.chdir(os.environ['HOME'])\n" + WRITE_100_MB)
    assert outcome.error["type"] == "file_limit", outcome


def test_open_files_limit(run):
    raw, outcome = run("files = [open('/dev/null') for _ in range(100)]\n", open_files=32)
    assert outcome.error["type"] == "runtime_error"
    assert b"Too many open files" in raw.stderr


def test_minimal_environment_and_private_scratch_directory(run, monkeypatch):
    monkeypatch.setenv("NANOGRID_TEST_SECRET", "do-not-leak")
    raw, outcome = run(
        """
        import os, resource
        def handler(event, context):
            return {"env": sorted(os.environ), "home": os.environ["HOME"],
                    "cpu": resource.getrlimit(resource.RLIMIT_CPU),
                    "core": resource.getrlimit(resource.RLIMIT_CORE)}
        """,
        handler="handler", timeout_s=2.5,
    )
    assert outcome.status == "SUCCESS", outcome
    assert outcome.result["env"] == ["HOME", "LANG", "PATH", "TMPDIR"]
    assert outcome.result["cpu"] == [4, 4]
    assert outcome.result["core"] == [0, 0]
    assert not os.path.exists(outcome.result["home"])


def test_background_processes_die_with_the_run(run):
    raw, outcome = run("import subprocess\nprint(subprocess.Popen(['sleep', '600']).pid)\n")
    assert outcome.status == "SUCCESS", outcome
    pid = int(raw.stdout)
    deadline = time.monotonic() + 5
    while _alive(pid):
        assert time.monotonic() < deadline, "the background process outlived the run"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_cancels_the_run(sandbox, prepare):
    spec = prepare("import time\ntime.sleep(600)\n", timeout_s=30)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(raw=sandbox.run(spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not sandbox.kill(spec.job_id):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)
    thread.join(timeout=10)
    assert not thread.is_alive()
    raw = outcome["raw"]
    assert raw.cancelled and not raw.timed_out
    assert classify(raw, spec.limits).error["type"] == "cancelled"
    assert not sandbox.kill(spec.job_id)


def test_remove_containers_has_nothing_to_remove(sandbox):
    assert sandbox.remove_containers(job_ids={"a"}) == 0
    assert sandbox.remove_containers(keep=set()) == 0


def test_setsid_orphans_die_with_the_run(run):
    """A double-forked, setsid'd process leaves the process group: the runner (a child subreaper)
    kills it when the handler returns."""
    raw, outcome = run(
        """
        import os, time
        def handler(event, context):
            reader, writer = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.write(writer, str(os.getpid()).encode())
                    time.sleep(600)
                os._exit(0)
            return int(os.read(reader, 32))
        """,
        handler="handler",
    )
    assert outcome.status == "SUCCESS", outcome
    deadline = time.monotonic() + 5
    while _alive(outcome.result):
        assert time.monotonic() < deadline, "the orphan outlived the run"
        time.sleep(0.05)


def test_timeout_kills_setsid_descendants(run):
    raw, outcome = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            print(os.getpid(), flush=True)
            time.sleep(600)
        time.sleep(600)
        """,
        timeout_s=1,
    )
    assert outcome.error["type"] == "timeout"
    pid = int(raw.stdout)
    deadline = time.monotonic() + 5
    while _alive(pid):
        assert time.monotonic() < deadline, "the setsid'd process outlived the timeout"
        time.sleep(0.05)


def test_peak_memory_and_cpu_time_from_the_runner(run):
    raw, outcome = run(
        """
        import time
        data = bytearray(64 * 1024 * 1024)
        for i in range(0, len(data), 4096):
            data[i] = 1
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        """
    )
    assert outcome.status == "SUCCESS", outcome
    assert 64 * 1024 * 1024 < raw.peak_memory_bytes < 256 * 1024 * 1024
    assert 200 <= raw.cpu_time_ms < 5000


def test_a_function_that_kills_its_runner(run):
    raw, outcome = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert not raw.cancelled
    assert outcome.error["type"] == "runtime_error" and outcome.error["signal"] == 9, outcome


@pytest.mark.parametrize("code, message", [
    # Written straight into the result pipe, bypassing the runner's own json.dumps: a well-framed
    # record of JSON nested too deeply to parse, and bytes that are no record at all.
    ("import os, stat, struct\nbody = b'[' * 100000 + b']' * 100000\nfor fd in range(3, 64):\n    try:\n"
     "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
     "            os.write(fd, struct.pack('>cI', b'r', len(body)) + body)\n    except OSError:\n        pass\n",
     "not valid JSON"),
    ("import os, stat\nfor fd in range(3, 64):\n    try:\n        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
     "            os.write(fd, b'{\"ok\": true, \"value\": \"forged\"}')\n    except OSError:\n        pass\n",
     "the handler's result channel was written to by something else"),
    ("def handler(event, context):\n    return 'x' * (9 * 1024 * 1024)\n", "bytes of JSON"),
], ids=["deeply-nested", "not-a-record", "oversized"])
def test_hostile_results_are_invalid_results(run, code, message):
    raw, outcome = run(code, handler="handler" if "def handler" in code else None)
    assert outcome.error["type"] == "invalid_result" and message in outcome.error["message"], outcome


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
        assert not _alive(second.result["value"]["background"]) and os.listdir(scratch) == []
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
    assert not _alive(int(frames.stdout))


@pytest.mark.parametrize("data", [b"zzzzz", FRAME_HEADER.pack(b"q", 3) + b"{no", FRAME_HEADER.pack(b"q", 10) + b"{}"],
                         ids=["not-a-frame", "not-json", "cut-short"])
def test_the_runner_refuses_a_broken_request(tmp_path, data):
    code_dir, scratch = write_code_dir(tmp_path / "code", "print('never')\n"), tmp_path / "scratch"
    scratch.mkdir()
    runner = start_runner(code_dir, scratch)
    out, err = runner.communicate(data, timeout=10)
    assert runner.returncode == 2 and out == b"" and err.startswith(b"runner: "), err
