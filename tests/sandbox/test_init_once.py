"""Init once, fork per run: in handler mode a sandbox imports main.py once, in a zygote, and forks
every run from that state (runtime/runner.py: Init once); "init": "per_run" imports it per run.

Against real warm containers (and the process sandbox where one run per runner says something):
the init is paid by a container's first run only, every run starts from the same post-init
state, the init's output goes to the first run, a failed or too slow init is an init_error, and
a run can neither read its zygote's memory nor, by killing it, get the container reused."""

from __future__ import annotations

from typing import Iterator

import pytest

from nanogrid.config import Settings
from nanogrid.sandbox.docker import DockerSandbox
from nanogrid.sandbox.process import ProcessSandbox
from support.runs import Function

pytestmark = pytest.mark.runtimes("runc", "runsc")

HEAVY = """
import socket, time
time.sleep(1.5)
blob = bytearray(50 * 2**20)
def handler(event, context):
    return {"host": socket.gethostname(), "blob": len(blob)}
"""

STATE = """
import os, socket, sys
count = 0
token = os.urandom(8).hex()
def handler(event, context):
    global count
    count += 1
    seen = {"count": count, "token": token, "host": socket.gethostname(),
            "fractions": "fractions" in sys.modules, "env": os.environ.get("SET_BY_A_RUN"),
            "files": sorted(os.listdir("/tmp"))}
    import fractions  # noqa: F401 - a module a run imports stays that run's
    os.environ["SET_BY_A_RUN"] = "yes"
    globals()["added_by_a_run"] = True
    seen["added"] = "added_by_a_run" in globals()
    with open(f"/tmp/run-{count}", "w") as f:
        f.write("x")
    return seen
"""


@pytest.fixture
def docker(docker_settings) -> Iterator[DockerSandbox]:
    sandbox = DockerSandbox(docker_settings, "test-worker")
    yield sandbox
    sandbox.pool.close()


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def sandbox(request) -> Iterator:
    if request.param == "process":
        yield ProcessSandbox(Settings(), "test-worker")
        return
    # Reached at run time, hence the mark on the parameter (and runc alone: the runtimes are
    # parametrized at collection).
    docker = DockerSandbox(request.getfixturevalue("runtime_image"), "test-worker")
    yield docker
    docker.pool.close()


def test_the_init_is_paid_by_the_first_run_only(docker, tmp_path):
    function = Function(tmp_path, HEAVY)
    runs = [function.run(docker) for _ in range(4)]
    for raw, outcome in runs:
        assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
    durations = [raw.duration_ms for raw, _ in runs]
    print(f"durations of the runs (ms): {durations}")
    assert len({outcome.result["host"] for _, outcome in runs}) == 1, "one warm container served them all"
    assert durations[0] > 1500, durations
    assert all(duration < 300 for duration in durations[1:]), durations


def test_every_run_starts_from_the_state_after_the_init(docker, tmp_path):
    function = Function(tmp_path, STATE)
    results = []
    for _ in range(5):
        raw, outcome = function.run(docker)
        assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
        results.append(outcome.result)
    assert len({r["host"] for r in results}) == 1, "one warm container served them all"
    assert len({r["token"] for r in results}) == 1, "main.py was imported once"
    for result in results:
        # Nothing one run changed (globals, sys.modules, the environment, files) reached the next.
        assert (result["count"], result["fractions"], result["env"], result["files"], result["added"]) == (
            1, False, None, [], True), result


def test_init_per_run_imports_main_in_every_run(docker, tmp_path):
    function = Function(tmp_path, STATE, init="per_run")
    results = [function.run(docker)[1].result for _ in range(3)]
    assert len({r["host"] for r in results}) == 1, "one warm container served them all"
    assert len({r["token"] for r in results}) == 3, "main.py was imported in every run"
    assert [r["count"] for r in results] == [1, 1, 1]


def test_an_exception_at_import_is_an_init_error(sandbox, tmp_path):
    function = Function(tmp_path, "import json\n\ndef broken():\n    raise ValueError('no model here')\n\n"
                                  "broken()\n\ndef handler(event, context):\n    return 1\n")
    raw, outcome = function.run(sandbox)
    assert outcome.status == "FAILED" and outcome.error["type"] == "init_error", outcome
    assert "ValueError: no model here" in outcome.error["message"]
    stderr = raw.stderr.decode()
    assert stderr.startswith("Traceback (most recent call last):\n") and 'main.py", line 6, in <module>' in stderr
    assert 'main.py", line 4, in broken' in stderr and stderr.rstrip().endswith("ValueError: no model here")
    assert "runner.py" not in stderr and "importlib" not in stderr and "<frozen" not in stderr
    if isinstance(sandbox, DockerSandbox):
        assert sandbox.pool.idle() == [], "a container whose init failed is not reused"


def test_system_exit_at_import_is_an_init_error(sandbox, tmp_path):
    raw, outcome = Function(tmp_path, "import sys\nsys.exit(4)\n").run(sandbox)
    assert outcome.error["type"] == "init_error" and raw.exit_code == 4, outcome


def test_an_init_over_its_timeout_is_stopped(sandbox, tmp_path):
    function = Function(tmp_path, "import time\ntime.sleep(600)\ndef handler(event, context):\n    return 1\n",
                        timeout_s=10, init_timeout_s=1)
    raw, outcome = function.run(sandbox)
    assert outcome.status == "FAILED" and outcome.error["type"] == "init_error", outcome
    assert "timed out" in outcome.error["message"] and not raw.timed_out
    # Stopped by the runner at init_timeout_s: long before the worker's deadline (10 + 1 s).
    assert 1000 <= raw.duration_ms < 6000, raw.duration_ms


def test_a_run_cannot_reach_into_its_zygote(docker, tmp_path):
    """The run's parent is the runner (the zygote hands each run over to it); neither it nor the
    zygote (non-dumpable both) lets the run read its memory, environment or descriptors, or
    ptrace it; a run that kills its zygote gets its container retired."""
    function = Function(tmp_path, """
        import ctypes, os, socket
        secret = "zygote memory"
        def zygote():
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                try:
                    if open(f"/proc/{pid}/comm", "rb").read().strip() == b"nanogrid-zygote":
                        return int(pid)
                except OSError:
                    pass
        def refusals(target):
            refused = {}
            for name in ("mem", "environ", "fd"):
                try:
                    if name == "fd":
                        os.listdir(f"/proc/{target}/fd")
                    else:
                        open(f"/proc/{target}/{name}", "rb").read(1)
                    refused[name] = False
                except PermissionError:
                    refused[name] = True
            libc = ctypes.CDLL(None, use_errno=True)
            attached = libc.ptrace(16, target, None, None)  # PTRACE_ATTACH
            refused["ptrace"] = attached == -1 and ctypes.get_errno() == 1  # EPERM
            return refused
        def handler(event, context):
            target = zygote()
            result = {"parent": os.getppid(), "zygote": target, "host": socket.gethostname(),
                      "refused": {"runner": refusals(os.getppid()), "zygote": refusals(target)}}
            if event.get("kill"):
                os.kill(target, 9)
            return result
    """)
    raw, outcome = function.run(docker)
    assert outcome.status == "SUCCESS", (outcome, raw.stderr)
    result = outcome.result
    assert result["parent"] == 1 and result["zygote"] not in (None, 1), result
    everything = {"mem": True, "environ": True, "fd": True, "ptrace": True}
    if docker.settings.docker_runtime == "runsc":
        # gVisor's /proc shows a non-dumpable process's environment and descriptors to its uid
        # (the reason for the exit frame's nonce, runner.py); its memory and ptrace it refuses.
        everything = {**everything, "environ": False, "fd": False}
    assert result["refused"] == {"runner": everything, "zygote": everything}
    first_host = result["host"]
    # A run that kills its zygote ends normally, but its container is retired; the next run gets a fresh one.
    raw, outcome = function.run(docker, event={"kill": True})
    assert outcome.status == "SUCCESS" and outcome.result["host"] == first_host, (outcome, raw.stderr)
    assert docker.pool.idle() == [], "the container whose zygote was killed is not reused"
    raw, outcome = function.run(docker)
    assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
    assert outcome.result["host"] != first_host


def test_the_init_output_goes_to_the_first_run(sandbox, tmp_path):
    function = Function(tmp_path, """
        import sys
        print("loading the model")
        print("a warning at import", file=sys.stderr)
        def handler(event, context):
            print("handling", event["n"])
            return event["n"]
    """)
    outputs = []
    for n in range(3 if isinstance(sandbox, DockerSandbox) else 1):
        raw, outcome = function.run(sandbox, event={"n": n})
        assert outcome.status == "SUCCESS" and outcome.result == n, (outcome, raw.stderr)
        outputs.append((raw.stdout, raw.stderr))
    assert outputs[0] == (b"loading the model\nhandling 0\n", b"a warning at import\n")
    assert outputs[1:] == [(f"handling {n}\n".encode(), b"") for n in range(1, len(outputs))]


def test_what_the_init_leaves_in_tmp_and_running_is_gone_before_the_first_run(docker, tmp_path):
    function = Function(tmp_path, """
        import os, subprocess
        open("/tmp/written-at-import", "w").close()
        helper = subprocess.Popen(["sleep", "600"])
        def handler(event, context):
            alive = [p for p in os.listdir("/proc") if p.isdigit() and int(p) == helper.pid]
            return {"files": os.listdir("/tmp"), "helper_alive": bool(alive)}
    """)
    for _ in range(2):
        raw, outcome = function.run(docker)
        assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
        assert outcome.result == {"files": [], "helper_alive": False}
