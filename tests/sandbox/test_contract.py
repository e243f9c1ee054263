"""The contract every sandbox backend keeps, one test for both: the process sandbox (the runner as a
child process with rlimits: no isolation) and the Docker sandbox (the runner in a warm container).

Results, output, exit codes and signals, the deadline, the output cap and the other limits, the
input on stdin, a minimal environment, background processes, a kill; the Docker backend under
each OCI runtime (runc, crun, runsc). Where the backends may differ (where the code lives, which
variables Docker adds, how a left-over process is found) the backend says so, not the test. What only one backend does is tested beside it:
tests/unit/test_process_sandbox.py and tests/integration/test_docker_sandbox.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from nanogrid.config import Settings
from nanogrid.limits import Limits
from nanogrid.outcomes import Outcome, classify
from nanogrid.sandbox import RawRun, RunSpec
from nanogrid.sandbox.docker import KILL_GRACE_S, DockerSandbox
from nanogrid.sandbox.process import ProcessSandbox
from support.docker import job_containers
from support.processes import running
from support.runtimes import chosen
from support.waiting import eventually

LIMITS = Limits(timeout_s=10, memory_mb=256, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)
MiB = 1024 * 1024


class Backend:
    """A sandbox to run code in, and what the contract lets it do its own way."""

    name: str
    runner_lives_on: bool  # after a run, serving the next one of its version (a warm container)
    environment: set[str]  # the variables a run sees
    memory_flag: str  # the RawRun fact by which a run over its memory shows: how the limit is enforced

    def __init__(self, sandbox, tmp_path: Path):
        self.sandbox = sandbox
        self.tmp_path = tmp_path

    def spec(self, code: str, handler: str | None = None, event=None, **limit_changes) -> RunSpec:
        """A run of code as a function version of its own (the code's sha is part of the warm key),
        from a code directory the way the worker extracts it (readable by the sandbox's user)."""
        code = textwrap.dedent(code)
        job_id = f"test-{uuid.uuid4().hex[:12]}"
        code_dir = self.tmp_path / job_id
        code_dir.mkdir(mode=0o755)
        (code_dir / "main.py").write_text(code)
        (code_dir / "main.py").chmod(0o644)
        return RunSpec(job_id, "fn-test", code_dir, handler, dataclasses.replace(LIMITS, **limit_changes), version=1,
                       code_sha=hashlib.sha256(code.encode()).hexdigest(),
                       input_json=json.dumps(event if event is not None else {}))

    def run(self, code: str, handler: str | None = None, event=None, **limit_changes) -> tuple[RawRun, Outcome]:
        spec = self.spec(code, handler, event, **limit_changes)
        raw = self.sandbox.run(spec)
        self.check_nothing_left(spec)
        return raw, classify(raw, spec.limits)

    def check_nothing_left(self, spec: RunSpec) -> None:
        """What must hold once a run has returned."""

    def survivors(self, pids: list[int]) -> list[int]:
        """The processes of past runs still alive; pids: those the code reported (its own view)."""
        raise NotImplementedError


class ProcessBackend(Backend):
    name = "process"
    runner_lives_on = False
    # NANOGRID_SECRETS_DIR: where the run's secrets are (a path; the values are files there; in a
    # container they are at /run/secrets).
    environment = {"HOME", "LANG", "PATH", "TMPDIR", "NANOGRID_SECRETS_DIR"}
    memory_flag = "memory_error"  # RLIMIT_AS: the allocation fails with MemoryError

    def survivors(self, pids: list[int]) -> list[int]:
        return [pid for pid in pids if running(pid)]  # the code sees the host's pids


class DockerBackend(Backend):
    name = "docker"
    runner_lives_on = True
    environment = {"HOME", "HOSTNAME", "LANG", "PATH", "PYTHONPATH"}
    memory_flag = "oom_killed"  # the container's memory cgroup: the kernel kills it

    def check_nothing_left(self, spec: RunSpec) -> None:
        # No container of the job (labelled with it, or a warm one recorded as running it), nor a busy one.
        assert job_containers(spec.job_id) == []
        assert self.sandbox.pool.busy() == [] and self.sandbox.running_container(spec.job_id) is None

    def survivors(self, pids: list[int]) -> list[int]:
        # The code sees its container's own pids: look in the warm containers instead, where nothing
        # but the runner (PID 1) may run between runs (a container that was not kept took its
        # processes along). Listed from inside, as the code saw them: dockerd's `top` reads the
        # host's process table, which a gVisor sandbox's processes are not in.
        found = []
        for slot in self.sandbox.pool.idle():
            listed = slot.container.exec_run(["python3", "-I", "-c", LIST_PROCESSES])
            assert listed.exit_code == 0, listed.output
            found += [int(pid) for pid in listed.output.split()]
        return found


# Run in a container: its processes but PID 1 (the runner), the runner's zygote (init once: the one
# child of PID 1 named nanogrid-zygote, which stays between runs) and the listing itself.
LIST_PROCESSES = """
import os
def zygote(pid):
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
        name = open(f"/proc/{pid}/comm", "rb").read().strip()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[1] == b"1" and name == b"nanogrid-zygote"
pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
zygotes = [pid for pid in pids if zygote(pid)]
print(*(pid for pid in pids if pid not in zygotes[:1]))
"""


# The Docker backend under each OCI runtime, as the rest of the Docker sandbox's tests (support.runtimes).
DOCKER_RUNTIMES = chosen(("runc", "crun", "runsc"))


@pytest.fixture(params=["process", *(pytest.param(f"docker-{runtime}", marks=pytest.mark.docker)
                                     for runtime in DOCKER_RUNTIMES)])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "process":
        yield ProcessBackend(ProcessSandbox(Settings(), "test-worker"), tmp_path)
        return
    # Reached at run time, hence the mark on the parameter.
    runtime = request.param.removeprefix("docker-")
    sandbox = DockerSandbox(request.getfixturevalue("runtime_image").replace(docker_runtime=runtime), "test-worker")
    yield DockerBackend(sandbox, tmp_path)
    sandbox.pool.close()


def test_handler_result(backend):
    raw, outcome = backend.run(
        """
        def handler(event, context):
            return {"sum": event["a"] + event["b"], "job": context.job_id, "left_ms": context.remaining_time_ms()}
        """,
        handler="handler", event={"a": 2, "b": 3},
    )
    assert outcome.status == "SUCCESS", (outcome, raw.runner_stderr)
    assert outcome.result["sum"] == 5 and outcome.result["job"].startswith("test-")
    assert 0 < outcome.result["left_ms"] <= LIMITS.timeout_s * 1000
    assert raw.exit_code == 0 and raw.duration_ms > 0
    assert raw.runner_exit_code == (None if backend.runner_lives_on else 0)


def test_script_reads_input_from_stdin(backend):
    raw, outcome = backend.run("import json, sys\nprint('hello', json.load(sys.stdin)['name'])\n",
                               event={"name": "grid"})
    assert outcome.status == "SUCCESS", outcome
    assert raw.stdout == b"hello grid\n" and raw.result is None


def test_stdout_stderr_and_user_traceback(backend):
    raw, outcome = backend.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise ValueError('boom')\n")
    assert outcome.error["type"] == "runtime_error" and outcome.exit_code == 1
    assert raw.stdout == b"out\n"
    stderr = raw.stderr.decode()
    assert stderr.startswith("err\n") and stderr.rstrip().endswith("ValueError: boom")
    assert 'main.py", line 4' in stderr
    assert "runner.py" not in stderr


def test_non_zero_exit(backend):
    raw, outcome = backend.run("import sys\nsys.exit(3)\n")
    assert outcome.status == "FAILED" and outcome.error["type"] == "runtime_error"
    assert raw.exit_code == 3 and outcome.exit_code == 3


@pytest.mark.parametrize("code", ["while True:\n    pass\n", "import time\ntime.sleep(600)\n"], ids=["busy", "sleep"])
def test_the_deadline_ends_the_run(backend, code):
    raw, outcome = backend.run(code, timeout_s=1)
    assert raw.timed_out and outcome.error["type"] == "timeout"
    # Ended by the deadline, on the sandbox's own clock: not before it, nor later than the kill's grace.
    assert 1000 <= raw.duration_ms <= (1 + KILL_GRACE_S + 1) * 1000, raw.duration_ms


def test_memory_limit(backend):
    raw, outcome = backend.run("data = bytearray(1024 * 1024 * 1024)\n", memory_mb=256)
    assert getattr(raw, backend.memory_flag)
    assert outcome.error["type"] == "memory_limit", (outcome, raw.runner_stderr)


def test_output_cap_keeps_the_head_and_kills(backend):
    raw, outcome = backend.run(
        "import sys\nprint('HEAD')\nchunk = 'x' * (1024 * 1024)\nfor _ in range(50):\n    sys.stdout.write(chunk)\n",
        output_bytes=64 * 1024,
    )
    assert raw.output_truncated and outcome.error["type"] == "output_limit"
    assert raw.stdout.startswith(b"HEAD\nxxxx")
    assert len(raw.stdout) + len(raw.stderr) <= 64 * 1024


def test_file_size_limit(backend):
    # HOME is the run's scratch space in both (Docker: its tmpfs, large enough here).
    raw, outcome = backend.run(
        """
        import os
        chunk = b"x" * (1024 * 1024)
        with open(os.path.join(os.environ["HOME"], "big"), "wb") as f:
            for _ in range(100):
                f.write(chunk)
        """,
        file_size_mb=10, tmpfs_mb=200,
    )
    assert outcome.error["type"] == "file_limit", outcome


def test_open_files_limit(backend):
    raw, outcome = backend.run("files = [open('/dev/null') for _ in range(100)]\n", open_files=64)
    assert outcome.error["type"] == "runtime_error"
    assert b"Too many open files" in raw.stderr


def test_a_minimal_environment_and_the_run_limits_as_rlimits(backend, monkeypatch):
    monkeypatch.setenv("NANOGRID_TEST_SECRET", "do-not-leak")  # the worker's own environment
    raw, outcome = backend.run(
        """
        import os, resource
        def handler(event, context):
            return {"env": sorted(os.environ), "secret": os.environ.get("NANOGRID_TEST_SECRET"),
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
                    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
                    "core": resource.getrlimit(resource.RLIMIT_CORE)}
        """,
        handler="handler", open_files=50, file_size_mb=7,
    )
    assert outcome.status == "SUCCESS", outcome
    result = outcome.result
    assert set(result["env"]) == backend.environment and result["secret"] is None
    assert result["nofile"] == [50, 50] and result["fsize"] == [7 * MiB] * 2 and result["core"] == [0, 0]


def test_background_processes_end_with_the_run(backend):
    """A child and a double-forked, setsid'd daemon left behind: the handler's return ends the run
    (not the deadline), and neither outlives it."""
    raw, outcome = backend.run(
        """
        import os, subprocess, time
        def handler(event, context):
            pids = [subprocess.Popen(["sleep", "600"]).pid]
            reader, writer = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.write(writer, str(os.getpid()).encode())
                    while True:
                        print("still here", flush=True)
                        time.sleep(0.1)
                os._exit(0)
            pids.append(int(os.read(reader, 32)))
            return pids
        """,
        handler="handler", timeout_s=60,
    )
    assert outcome.status == "SUCCESS" and not raw.timed_out, outcome
    eventually(lambda: not backend.survivors(outcome.result), 30, "no process of the run is left")


def test_the_deadline_ends_background_processes_too(backend):
    raw, outcome = backend.run(
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
    eventually(lambda: not backend.survivors([int(raw.stdout)]), 30, "the setsid'd process is gone")


def test_a_kill_cancels_the_run(backend):
    spec = backend.spec("import time\ntime.sleep(600)\n", timeout_s=60)
    ran: dict = {}
    thread = threading.Thread(target=lambda: ran.update(raw=backend.sandbox.run(spec)), daemon=True)
    thread.start()

    def killed() -> bool:
        assert thread.is_alive(), f"the run ended before it was killed: {ran}"
        return backend.sandbox.kill(spec.job_id)  # False until the run has started

    eventually(killed, 60, "the run starts and is killed", interval_s=0.02)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the killed run did not return"
    raw = ran["raw"]
    assert raw.cancelled and not raw.timed_out
    assert classify(raw, spec.limits).error["type"] == "cancelled"
    assert not backend.sandbox.kill(spec.job_id)
    backend.check_nothing_left(spec)


def test_peak_memory_and_cpu_time_from_the_runner(backend):
    raw, outcome = backend.run(
        """
        import time
        data = bytearray(48 * 1024 * 1024)
        for i in range(0, len(data), 4096):
            data[i] = 1
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        """
    )
    assert outcome.status == "SUCCESS", outcome
    assert 48 * MiB < raw.peak_memory_bytes < LIMITS.memory_mb * MiB
    # CPU time, not wall time: at least what the loop burned, at most what the run was allowed.
    assert 300 <= raw.cpu_time_ms < LIMITS.timeout_s * 1000


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
def test_hostile_results_are_invalid_results(backend, code, message):
    raw, outcome = backend.run(code, handler="handler" if "def handler" in code else None)
    assert outcome.error["type"] == "invalid_result" and message in outcome.error["message"], outcome
