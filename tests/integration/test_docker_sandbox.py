"""DockerSandbox against the real dockerd and the real runtime image (built by `runtime_image`).

What both backends promise is tested once for both in tests/sandbox/test_contract.py; here is what
only this one does: isolation, the container's settings, kills from elsewhere, the janitor's
labels. Runs go through the warm pool (the default): every test's code is its own function
version, so each test starts a container of its own (tests/integration/test_warm_pool.py covers
reuse). The tests of a sandbox run under each OCI runtime (runc, crun, runsc); where gVisor's
kernel lets a function do more to its own sandbox than Linux does, the test says so and checks
what still holds (README: Sandbox runtimes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from nanogrid.errors import Unavailable
from nanogrid.limits import Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import (LABEL_FUNCTION, LABEL_INSTANCE, LABEL_JOB, LABEL_VERSION, LABEL_WARM, LABEL_WORKER,
                              RunSpec, instance_id)
from nanogrid.sandbox import docker as docker_sandbox
from nanogrid.sandbox.docker import DockerSandbox
from nanogrid.sandbox.image import LABEL_DIGEST, image_status
from support.docker import job_containers
from support.waiting import eventually


pytestmark = pytest.mark.runtimes("runc", "crun", "runsc")

LIMITS = Limits(timeout_s=10, memory_mb=128, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=32,
                output_bytes=64 * 1024)
WORKER_ID = "test-worker"
FUNCTION_ID = "fn-test"


def write_code_dir(code_dir: Path, code: str) -> Path:
    """What the worker prepares: the extracted bundle, readable by uid 65534."""
    code_dir.mkdir(mode=0o755)
    (code_dir / "main.py").write_text(textwrap.dedent(code))
    (code_dir / "main.py").chmod(0o644)
    return code_dir


def make_spec(code_dir: Path, code: str, handler: str | None, event, job_id: str, limits: Limits,
              **extra) -> RunSpec:
    """A run of code as its own function version (the sha of the code is part of the warm key)."""
    return RunSpec(job_id, FUNCTION_ID, code_dir, handler, limits, version=1,
                   code_sha=hashlib.sha256(code.encode()).hexdigest(),
                   input_json=json.dumps(event if event is not None else {}), **extra)


def gvisor(sandbox: DockerSandbox) -> bool:
    return sandbox.settings.docker_runtime == "runsc"


@pytest.fixture
def sandbox(docker_settings) -> DockerSandbox:
    sandbox = DockerSandbox(docker_settings, WORKER_ID)
    yield sandbox
    sandbox.pool.close()


@pytest.fixture
def prepare(sandbox, tmp_path):
    def prepare(code: str, handler: str | None = None, event=None, **limit_changes) -> RunSpec:
        limits = dataclasses.replace(LIMITS, **limit_changes)
        job_id = f"test-{uuid.uuid4().hex[:12]}"
        return make_spec(write_code_dir(tmp_path / job_id, code), code, handler, event, job_id, limits)

    return prepare


@pytest.fixture
def run(sandbox, prepare):
    """Run code; no run leaves a container labelled with its job, nor a busy one in the pool."""

    def run(code: str, handler: str | None = None, event=None, **limit_changes):
        spec = prepare(code, handler, event, **limit_changes)
        raw = sandbox.run(spec)
        assert job_containers(spec.job_id) == []
        assert sandbox.pool.busy() == [] and sandbox.running_container(spec.job_id) is None
        return raw, classify(raw, spec.limits)

    return run


def test_image_is_current(runtime_image):
    ready, message = image_status(runtime_image)
    assert ready, message


def test_no_network(run):
    raw, outcome = run(
        """
        import os, socket
        def handler(event, context):
            try:
                socket.create_connection(("1.1.1.1", 53), timeout=3).close()
                error = None
            except OSError as exc:
                error = repr(exc)
            return {"error": error, "interfaces": sorted(os.listdir("/sys/class/net"))}
        """,
        handler="handler",
    )
    assert outcome.status == "SUCCESS", outcome
    assert outcome.result["error"] is not None
    assert outcome.result["interfaces"] == ["lo"]


def test_unprivileged_user_without_capabilities(sandbox, run):
    raw, outcome = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def handler(event, context):
            status = {k: v.strip() for k, v in (line.split(":", 1) for line in open("/proc/self/status"))}
            ambient = libc.prctl(47, 1, 0, 0, 0)  # PR_CAP_AMBIENT_IS_SET CAP_DAC_OVERRIDE
            return {
                "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "cap_eff": status["CapEff"], "cap_prm": status["CapPrm"], "cap_bnd": status["CapBnd"],
                "cap_amb": status.get("CapAmb"), "no_new_privs": status.get("NoNewPrivs"),
                "seccomp": status["Seccomp"], "prctl_no_new_privs": libc.prctl(39, 0, 0, 0, 0),
                "prctl_ambient": ambient if ambient >= 0 else -ctypes.get_errno(),
            }
        """,
        handler="handler",
    )
    assert outcome.status == "SUCCESS", outcome
    # Seccomp 2: a filter is installed (Docker's default profile and the runner's own; unconfined
    # would show 0). gVisor applies only the runner's (README: Sandbox runtimes), and its status
    # file has no CapAmb and no NoNewPrivs: it has no ambient set at all (PR_CAP_AMBIENT: EINVAL).
    expected = {"uid": 65534, "gid": 65534, "groups": [65534], "cap_eff": "0000000000000000",
                "cap_prm": "0000000000000000", "cap_bnd": "0000000000000000", "cap_amb": "0000000000000000",
                "no_new_privs": "1", "seccomp": "2", "prctl_no_new_privs": 1, "prctl_ambient": 0}
    if gvisor(sandbox):
        expected.update(cap_amb=None, no_new_privs=None, prctl_ambient=-22)
    assert outcome.result == expected


@pytest.mark.parametrize("warm", [False, True], ids=["single-use", "warm"])
def test_container_settings(sandbox, prepare, warm):
    """What dockerd was asked for, read back from the container before it runs."""
    spec = prepare("print('never started')\n", memory_mb=96, pids=40, cpus=0.5)
    container = sandbox._create(spec, warm=warm)
    try:
        container.reload()
        host, config = container.attrs["HostConfig"], container.attrs["Config"]
    finally:
        sandbox._remove(container)
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"]
    # No init: the runner is PID 1, the only process holding the container's stdin and stdout.
    assert not host["Init"] and config["Cmd"][:5] == ["python3", "-I", "-B", "/opt/nanogrid/runner.py", "/code"]
    assert config["OpenStdin"] and config["StdinOnce"] and not config["Tty"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]  # no seccomp=unconfined, no apparmor=unconfined
    assert host["Memory"] == host["MemorySwap"] == 96 * 1024 * 1024
    assert host["Runtime"] == sandbox.settings.docker_runtime
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
    assert {k: ulimits.pop(k) for k in ("nofile", "fsize", "core")} == {
        "nofile": (64, 64), "fsize": (10 * 1024 * 1024,) * 2, "core": (0, 0)}
    if gvisor(sandbox):
        # gVisor's own host threads count in the pids cgroup: the function's limit is its kernel's NPROC.
        assert host["PidsLimit"] == docker_sandbox.GVISOR_HOST_PIDS_BASE + 40 * docker_sandbox.GVISOR_HOST_PIDS_PER_PROCESS
        assert ulimits == {"nproc": (40, 40)}
    else:
        assert host["PidsLimit"] == 40 and ulimits == {}
    assert host["NanoCpus"] == 500_000_000
    assert host["Tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=32m,mode=1777",
                             "/run/secrets": "rw,noexec,nosuid,nodev,size=1m,mode=0700,uid=65534,gid=65534"}
    assert host["ShmSize"] == 32 * 1024 * 1024
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}}
    assert not host.get("Binds") and [m["Target"] for m in host["Mounts"]] == ["/code"]
    assert all(m["ReadOnly"] for m in host["Mounts"])
    assert config["User"] == "65534:65534"
    expected = {LABEL_FUNCTION: FUNCTION_ID, LABEL_VERSION: "1", LABEL_WORKER: WORKER_ID,
                LABEL_INSTANCE: instance_id(sandbox.settings)}
    # A warm container serves many jobs: it names its owner (this process) instead of a job.
    expected.update({LABEL_WARM: f"{socket.gethostname()}:{os.getpid()}"} if warm else {LABEL_JOB: spec.job_id})
    assert {k: v for k, v in config["Labels"].items() if k.startswith("nanogrid.") and k != LABEL_DIGEST} == expected
    names = {entry.split("=", 1)[0] for entry in config["Env"]}
    assert names <= {"HOME", "LANG", "PATH", "PYTHONPATH"}, config["Env"]


def test_read_only_root_and_code_noexec_tmp(sandbox, run):
    raw, outcome = run(
        """
        import errno, os, subprocess
        def attempt(action):
            try:
                action()
                return "ok"
            except OSError as exc:
                return errno.errorcode[exc.errno]
        def write(path):
            return lambda: open(path, "w").close()
        def handler(event, context):
            with open("/tmp/script.sh", "w") as script:
                script.write("#!/bin/sh\\necho ran\\n")
            os.chmod("/tmp/script.sh", 0o755)
            mounts = {line.split()[1]: line.split()[3].split(",") for line in open("/proc/self/mounts")}
            return {
                "root": attempt(write("/escape")),
                "runtime": attempt(write("/opt/nanogrid/runner.py")),
                "code": attempt(write("/code/main.py")),
                "tmp": attempt(write("/tmp/scratch")),
                "exec_tmp": attempt(lambda: subprocess.run(["/tmp/script.sh"])),
                "cwd": os.getcwd(),
                "read_only": ["ro" in mounts["/"], "ro" in mounts["/code"], "noexec" in mounts["/tmp"]],
            }
        """,
        handler="handler",
    )
    assert outcome.status == "SUCCESS", outcome
    # gVisor checks the permission before the read-only mount, so a write there is EACCES, not EROFS.
    refused = "EACCES" if gvisor(sandbox) else "EROFS"
    assert outcome.result == {"root": refused, "runtime": refused, "code": refused, "tmp": "ok",
                              "exec_tmp": "EACCES", "cwd": "/code", "read_only": [True, True, True]}


def test_cgroup_limits_and_paths_inside_the_container(sandbox, run):
    """Beyond the contract's rlimits (tests/sandbox): the container's cgroup holds memory and pids,
    HOME is its tmpfs and the runtime's helper module is on the path."""
    raw, outcome = run(
        """
        import os, resource
        def handler(event, context):
            cgroup = "/sys/fs/cgroup"
            def read(path):
                try:
                    return open(path).read().strip()
                except OSError:
                    return None
            return {
                "home": os.environ.get("HOME"),
                "path": os.environ.get("PYTHONPATH"),
                "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
                "memory": read(f"{cgroup}/memory/memory.limit_in_bytes") or read(f"{cgroup}/memory.max"),
                "pids": read(f"{cgroup}/pids/pids.max") or read(f"{cgroup}/pids.max"),
            }
        """,
        handler="handler", memory_mb=96, pids=32,
    )
    assert outcome.status == "SUCCESS", outcome
    result = outcome.result
    assert result["home"] == "/tmp" and result["path"] == "/opt/nanogrid", result
    if gvisor(sandbox):
        # No cgroup files inside gVisor: the memory cgroup holds the whole sandbox (test_container_settings),
        # and the pids limit is the sandbox kernel's process count.
        assert (result["memory"], result["pids"], result["nproc"]) == (None, None, [32, 32])
    else:
        assert result["memory"] == str(96 * 1024 * 1024)
        assert result["pids"] == "32"


def test_missing_image_is_unavailable(docker_settings, prepare):
    settings = docker_settings.replace(runtime_image="nanogrid-runtime:no-such-tag")
    sandbox = DockerSandbox(settings, WORKER_ID)
    spec = prepare("print('never runs')\n")
    with pytest.raises(Unavailable, match="nanogrid image build"):
        sandbox.run(spec)
    ready, message = image_status(settings)
    assert not ready and "nanogrid image build" in message
    assert job_containers(spec.job_id) == []


def test_unreachable_dockerd_is_unavailable(runtime_image, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-dockerd.sock")
    with pytest.raises(Unavailable, match="dockerd"):
        DockerSandbox(runtime_image, WORKER_ID).ping()
    ready, message = image_status(runtime_image)
    assert not ready and "dockerd" in message


def run_in_background(sandbox: DockerSandbox, spec: RunSpec) -> tuple[threading.Thread, dict]:
    """Start a run in a thread; returns once its container is running it, with the container's labels."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(raw=sandbox.run(spec)), daemon=True)
    thread.start()

    def running_container() -> str | None:
        assert thread.is_alive(), f"the run ended before its container ran it: {outcome}"
        return sandbox.running_container(spec.job_id)

    container_id = eventually(running_container, 60, "a container runs the job", interval_s=0.05)
    outcome["labels"] = sandbox.client.api.inspect_container(container_id)["Config"]["Labels"]
    return thread, outcome


def test_a_kill_from_another_sandbox_cancels_the_warm_run(sandbox, runtime_image, prepare):
    """A kill by another process's sandbox (the worker's control command): the warm container that
    runs the job is found by its record on this host (a kill by the same sandbox is in the contract)."""
    spec = prepare("import time\nprint('started', flush=True)\ntime.sleep(600)\n", timeout_s=300)
    thread, outcome = run_in_background(sandbox, spec)
    try:
        expected_labels = {LABEL_FUNCTION: FUNCTION_ID, LABEL_WORKER: WORKER_ID,
                           LABEL_WARM: f"{socket.gethostname()}:{os.getpid()}"}
        assert outcome["labels"].items() >= expected_labels.items() and LABEL_JOB not in outcome["labels"]
        killer = DockerSandbox(runtime_image, "another-worker")
        assert killer.kill(spec.job_id)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the killed run did not return"
    finally:
        if thread.is_alive() and (container_id := sandbox.running_container(spec.job_id)):
            sandbox.client.api.remove_container(container_id, force=True)  # a failed test must not leave it
    raw = outcome["raw"]
    assert raw.cancelled and not raw.timed_out
    assert classify(raw, spec.limits).error["type"] == "cancelled"
    assert job_containers(spec.job_id) == [] and sandbox.pool.idle() == []  # killed: not reused
    assert not killer.kill(spec.job_id)


def test_labels_and_remove_containers(sandbox, runtime_image):
    jobs = [f"test-leftover-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    foreign = jobs[3]  # another installation (another Redis) on the same dockerd
    try:
        for job_id in jobs:
            instance = "someone-else" if job_id == foreign else sandbox.instance
            container = sandbox.client.containers.create(
                runtime_image.runtime_image, ["python3", "-c", "import time; time.sleep(600)"],
                labels={LABEL_JOB: job_id, LABEL_FUNCTION: FUNCTION_ID, LABEL_WORKER: WORKER_ID,
                        LABEL_INSTANCE: instance},
                network_mode="none",
            )
            if job_id != jobs[2]:
                container.start()
        assert sandbox.remove_containers(job_ids={jobs[0]}) == 1
        assert job_containers(jobs[0]) == []
        # Other test runs may share this dockerd: keep every job container that is not ours.
        others = {c["Labels"][LABEL_JOB] for c in sandbox.client.api.containers(all=True, filters={"label": LABEL_JOB})}
        assert sandbox.remove_containers(keep=(others - {jobs[2], foreign})) == 1
        assert job_containers(jobs[2]) == []
        assert len(job_containers(jobs[1])) == 1
        # The sweep never touches another installation's sandboxes, though it does not keep them...
        assert sandbox.remove_containers(keep=(others - {jobs[1], foreign})) == 1
        assert job_containers(jobs[1]) == []
        assert len(job_containers(foreign)) == 1
        # ...but removal by job id does, whoever started them.
        assert sandbox.remove_containers(job_ids={foreign}) == 1
        assert sandbox.remove_containers(job_ids={jobs[1], foreign}) == 0
    finally:
        sandbox.remove_containers(job_ids=set(jobs))


def test_the_deadline_holds_when_a_kill_does_not(sandbox, prepare, monkeypatch):
    """container.kill() that does nothing (a wedged runtime): the stream is cut and the container
    force-removed KILL_GRACE_S after the deadline, instead of waiting for the stream forever."""
    monkeypatch.setattr(docker_sandbox._Supervisor, "_send_kill", lambda self: None)
    spec = prepare("import time\ntime.sleep(600)\n", timeout_s=1)
    raw = sandbox.run(spec)
    assert raw.timed_out and classify(raw, spec.limits).error["type"] == "timeout"
    # On the sandbox's clock: the stream was cut the kill's grace after the deadline.
    assert raw.duration_ms <= (1 + docker_sandbox.KILL_GRACE_S + 1) * 1000, raw.duration_ms
    assert job_containers(spec.job_id) == []


def test_a_function_cannot_kill_its_runner(sandbox, run):
    """The runner is PID 1 of the container: Linux drops the signals its namespace sends it.

    gVisor delivers them: there the function kills its own run, and only its own. Its container
    goes (it is not reused, and not taken for a cancellation); the next run gets a new one."""
    code = "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.5)\nprint(os.getppid())\n"
    raw, outcome = run(code)
    if gvisor(sandbox):
        assert outcome.error["type"] == "runtime_error" and outcome.error["signal"] == 9, outcome
        assert raw.runner_exit_code == 137 and not raw.cancelled and sandbox.pool.idle() == []
        raw, outcome = run("print('next')\n")
        assert outcome.status == "SUCCESS" and raw.stdout == b"next\n", outcome
    else:
        assert outcome.status == "SUCCESS" and raw.stdout == b"1\n", outcome
        assert raw.runner_exit_code is None and not raw.cancelled and len(sandbox.pool.idle()) == 1


def test_the_runner_is_out_of_the_user_codes_reach(sandbox, run):
    """The runner is non-dumpable: the user code can neither ptrace it nor open its descriptors.
    gVisor's /proc lets any process of the sandbox open them (the frame stream is protected by the
    run's nonce instead: test_the_containers_output_stream_is_out_of_reach)."""
    raw, outcome = run(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def handler(event, context):
            runner = os.getppid()
            try:
                open(f"/proc/{runner}/fd/1", "wb").close()
                fd = "opened"
            except OSError as exc:
                fd = type(exc).__name__
            attach = libc.ptrace(16, runner, None, None)  # PTRACE_ATTACH
            return {"fd": fd, "ptrace": attach == -1 and ctypes.get_errno(),
                    "own_environ": bool(open("/proc/self/environ", "rb").read())}
        """,
        handler="handler",
    )
    fd = "opened" if gvisor(sandbox) else "PermissionError"
    assert outcome.result == {"fd": fd, "ptrace": 1, "own_environ": True}, outcome  # 1: EPERM
    assert raw.stderr == b""


def test_the_containers_output_stream_is_out_of_reach(sandbox, run):
    """Only the runner (PID 1, non-dumpable) holds the container's stdout: the user code cannot
    write into the frame stream (with an init as PID 1 it could, through /proc/1/fd/1).

    Under gVisor it can (its /proc does not check who opens another process's descriptors): what
    it writes breaks its own run's stream, which ends the run and its container, and nothing else."""
    raw, outcome = run(
        """
        def handler(event, context):
            found = {}
            for fd in (0, 1, 2):
                try:
                    with open(f"/proc/1/fd/{fd}", "wb", buffering=0) as stream:
                        stream.write(b"this is not a frame" * 100)
                    found[fd] = "written"
                except OSError as exc:
                    found[fd] = type(exc).__name__
            return found
        """,
        handler="handler",
    )
    if gvisor(sandbox):
        assert raw.garbled and outcome.error["type"] == "runtime_error", outcome
        assert sandbox.pool.idle() == []
    else:
        assert outcome.result == {"0": "PermissionError", "1": "PermissionError", "2": "PermissionError"}, outcome
        assert not raw.garbled


def test_a_garbled_stream_stops_the_run(sandbox, prepare, monkeypatch):
    """A stream that stops being frames (here: the runner's output corrupted on the way) kills the
    run and the container."""
    original = docker_sandbox._Demux.feed

    def corrupt(self, data):
        return [(kind, b"this is not a frame" * 10 if kind == docker_sandbox.MUX_STDOUT else payload)
                for kind, payload in original(self, data)]

    monkeypatch.setattr(docker_sandbox._Demux, "feed", corrupt)
    spec = prepare("import time\nprint('hello', flush=True)\ntime.sleep(60)\n", timeout_s=20)
    raw = sandbox.run(spec)
    outcome = classify(raw, spec.limits)
    assert raw.garbled and outcome.error["type"] == "runtime_error", outcome
    assert not raw.timed_out and sandbox.pool.idle() == []  # stopped by the garbling, not by the deadline
