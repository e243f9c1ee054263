"""Warm containers against the real dockerd: reuse, the reuse contract, recycling, bounds, clean-up.

Every test has its own installation id (a Redis URL nobody uses), so the sweeps here only ever
see this module's containers. The tests run under runc and under runsc (gVisor), which differ in
what the reuse contract has to clean (README: Sandbox runtimes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from nanogrid import bundles
from nanogrid.limits import Limits
from nanogrid.outcomes import classify
from nanogrid.sandbox import LABEL_INSTANCE, LABEL_JOB, LABEL_WARM, RunSpec
from nanogrid.sandbox.docker import KILL_GRACE_S, DockerSandbox
from nanogrid.services import Services
from nanogrid.worker import execute
from support.waiting import eventually


pytestmark = pytest.mark.runtimes("runc", "runsc")

LIMITS = Limits(timeout_s=10, memory_mb=64, cpus=1.0, pids=64, open_files=64, file_size_mb=10, tmpfs_mb=16,
                output_bytes=64 * 1024)


@pytest.fixture
def settings(docker_settings):
    return docker_settings.replace(redis_url=f"redis://127.0.0.1:1/{uuid.uuid4().int % 10_000}",
                                 warm_pool_size=2, warm_max_containers=8, warm_memory_budget_mb=2048)


@pytest.fixture
def make_sandbox(settings):
    made = []

    def make_sandbox(**changes) -> DockerSandbox:
        sandbox = DockerSandbox(settings.replace(**changes), "test-worker")
        made.append(sandbox)
        return sandbox

    yield make_sandbox
    for sandbox in made:
        sandbox.pool.close()
        sandbox.remove_containers(keep=set())  # whatever a failed test left
        shutil.rmtree(sandbox.state_dir, ignore_errors=True)


@pytest.fixture
def sandbox(make_sandbox) -> DockerSandbox:
    return make_sandbox()


@pytest.fixture
def function(tmp_path):
    """function(code, version=1, function_id=...) -> spec(event, **limit changes) for runs of that version."""

    def function(code: str, version: int = 1, function_id: str = "fn-warm", handler: str | None = "handler"):
        code = textwrap.dedent(code)
        sha = hashlib.sha256(code.encode()).hexdigest()
        code_dir = tmp_path / f"{function_id}-v{version}-{sha[:8]}"
        if not code_dir.exists():
            code_dir.mkdir(mode=0o755)
            (code_dir / "main.py").write_text(code)
            (code_dir / "main.py").chmod(0o644)

        def spec(event=None, job_id: str | None = None, **limit_changes) -> RunSpec:
            return RunSpec(job_id or f"job-{uuid.uuid4().hex[:12]}", function_id, code_dir, handler,
                           dataclasses.replace(LIMITS, **limit_changes), version=version, code_sha=sha,
                           input_json=json.dumps(event))

        return spec

    return function


def containers(sandbox: DockerSandbox, **filters) -> list[dict]:
    """This installation's containers (all states), once the pool's evictions under way are done."""
    sandbox.pool.settle()
    labels = [f"{LABEL_INSTANCE}={sandbox.instance}", *filters.pop("labels", [])]
    return sandbox.client.api.containers(all=True, filters={"label": labels, **filters})


def run(sandbox: DockerSandbox, spec: RunSpec):
    raw = sandbox.run(spec)
    return raw, classify(raw, spec.limits)


def served_by(sandbox: DockerSandbox) -> set[str]:
    return {slot.container.id for slot in sandbox.pool.idle()}


PROBE = """
import ctypes, os, subprocess, time

def created(handle):
    return True if handle >= 0 else os.strerror(ctypes.get_errno())

def zygote(pid):
    # the runner's zygote (init once: it imported main.py, and stays between runs)
    try:
        return open(f"/proc/{pid}/comm", "rb").read().strip() == b"nanogrid-zygote"
    except OSError:
        return False

def handler(event, context):
    libc, librt = ctypes.CDLL(None, use_errno=True), ctypes.CDLL("librt.so.1", use_errno=True)
    found = {
        "tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm")),
        "mqueue": sorted(os.listdir("/dev/mqueue")) if os.path.isdir("/dev/mqueue") else None,
        "sysv": [open(f"/proc/sysvipc/{t}").read().splitlines()[1:] for t in ("shm", "msg", "sem")]
                if os.path.isdir("/proc/sysvipc") else None,
        # The same objects looked up by key and name, as the next run of this function would.
        "found_again": [libc.shmget(1234, 0, 0) >= 0, libc.msgget(1234, 0) >= 0, libc.semget(1234, 0, 0) >= 0,
                        librt.mq_open(b"/leftover", os.O_RDWR, 0, None) >= 0],
        "env": os.environ.get("LEFT_BEHIND"), "cwd": os.getcwd(),
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and not zygote(p)),
        "zygotes": len([p for p in os.listdir("/proc") if p.isdigit() and zygote(p)]),
        "me": os.getpid(), "parent": os.getppid(), "hostname": open("/etc/hostname").read().strip(),
    }
    if event.get("dirty"):
        os.environ["LEFT_BEHIND"] = "yes"
        for place in ("/tmp", "/dev/shm"):
            os.makedirs(f"{place}/nested/deeper")
            with open(f"{place}/nested/deeper/secret", "w") as f:
                f.write("from the first run")
            with open(f"{place}/.hidden", "w") as f:
                f.write("x")
            os.chmod(f"{place}/nested", 0o000)
            os.symlink("/etc/passwd", f"{place}/link")
        found["created"] = [created(libc.shmget(1234, 4096, 0o1666)), created(libc.msgget(1234, 0o1666)),
                            created(libc.semget(1234, 1, 0o1666)),
                            created(librt.mq_open(b"/leftover", os.O_CREAT | os.O_RDWR, 0o600, None))]
        # A daemon that setsid()s and double-forks away from the run.
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        subprocess.Popen(["sleep", "600"])
        time.sleep(0.1)
    return found
"""


def test_a_warm_container_serves_the_next_run_and_nothing_of_the_previous_run_is_left(sandbox, function):
    spec = function(PROBE)
    raw, first = run(sandbox, spec({"dirty": True}))
    assert first.status == "SUCCESS", (first, raw.stderr)
    if sandbox.settings.docker_runtime == "runsc":
        # gVisor has System V IPC and POSIX queues but neither /proc/sysvipc nor an mqueue fs to
        # list them: what the runner could not find again to remove, it does not allow (ENOSYS).
        assert first.result.pop("created") == ["Function not implemented"] * 4
        assert (first.result["mqueue"], first.result["sysv"]) == (None, None)
    else:
        assert first.result.pop("created") == [True] * 4
    (container_id,) = served_by(sandbox)
    raw, second = run(sandbox, spec({}))
    assert second.status == "SUCCESS", (second, raw.stderr)
    assert served_by(sandbox) == {container_id}  # the same container...
    assert second.result["hostname"] == first.result["hostname"]
    found = second.result
    # ...and nothing of the first run in it: files, IPC objects, environment, processes.
    assert (found["tmp"], found["shm"]) == ([], []) and found["found_again"] == [False] * 4
    if sandbox.settings.docker_runtime != "runsc":
        assert found["mqueue"] == [] and found["sysv"] == [[], [], []]
    assert found["env"] is None and found["cwd"] == "/code"
    assert found["processes"] == sorted([1, found["me"]]) and found["parent"] == 1 and found["zygotes"] == 1
    assert found == {**first.result, "me": found["me"], "processes": found["processes"]}  # as clean as new
    assert len(containers(sandbox)) == 1


FORGER = """
import json, os, struct, time

def handler(event, context):
    if "secret" in event:
        return {"secret": event["secret"]}
    # Forge the end of this run into the runner's stdout, then stay, read what the worker sends
    # this container next (the next run's request) and write it into the next run's output.
    forged = json.dumps({"exit_code": 0, "signal": None, "memory_error": False, "clean": True,
                         "nonce": "0" * 32}).encode()
    try:
        out = os.open(f"/proc/{os.getppid()}/fd/1", os.O_WRONLY)
        stdin = os.open(f"/proc/{os.getppid()}/fd/0", os.O_RDONLY)
    except OSError as exc:
        return {"forged": type(exc).__name__}
    if os.fork() == 0:
        os.setsid()
        deadline = time.time() + 5
        while time.time() < deadline:
            stolen = os.read(stdin, 65536)
            os.write(out, struct.pack(">cI", b"o", len(stolen)) + stolen)
        os._exit(0)
    os.write(out, struct.pack(">cI", b"x", len(forged)) + forged)
    time.sleep(3)
    return {"forged": "written"}
"""


def test_a_forged_end_of_a_run_neither_ends_it_nor_reaches_the_next_run(sandbox, function):
    """Under gVisor a function can open its runner's stdin and stdout (README: Sandbox runtimes).
    An exit frame it writes lacks the run's nonce: the worker takes the stream as broken, the run
    ends there and its container goes, so the next run's request never reaches what it left."""
    spec = function(FORGER)
    raw, first = run(sandbox, spec({}))
    if sandbox.settings.docker_runtime == "runsc":
        assert raw.garbled and first.error["type"] == "runtime_error", first
        assert raw.duration_ms < 3000 and sandbox.pool.idle() == [] and containers(sandbox) == []
    else:
        assert first.result == {"forged": "PermissionError"}, first
    secret = uuid.uuid4().hex
    raw, second = run(sandbox, spec({"secret": secret}))
    assert second.status == "SUCCESS" and second.result == {"secret": secret}, second
    assert secret.encode() not in raw.stdout + raw.stderr + raw.runner_stderr and len(served_by(sandbox)) == 1


def test_module_state_does_not_survive_between_runs(sandbox, function):
    spec = function("""
        import sys
        CALLS = []
        def handler(event, context):
            CALLS.append(event)
            sys.modules.setdefault("planted", object())
            return {"calls": len(CALLS), "planted_before": "planted" in sys.modules and len(CALLS) > 1}
        """)
    results = [run(sandbox, spec({"n": n}))[1].result for n in range(3)]
    assert results == [{"calls": 1, "planted_before": False}] * 3
    assert len(served_by(sandbox)) == 1


def test_a_warm_container_serves_many_runs_without_leaking_descriptors(sandbox, function):
    spec = function("import os\ndef handler(event, context):\n    return len(os.listdir('/proc/self/fd'))\n")
    results = [run(sandbox, spec(None, open_files=64))[1] for _ in range(30)]  # 3 pipes a run, were they kept
    assert {r.status for r in results} == {"SUCCESS"} and len({r.result for r in results}) == 1, results[-1]
    assert len(served_by(sandbox)) == 1


def test_a_new_version_is_never_served_by_an_old_container(sandbox, function):
    old = function("def handler(event, context):\n    return 'v1'\n", version=1)
    new = function("def handler(event, context):\n    return 'v2'\n", version=2)
    assert run(sandbox, old(None))[1].result == "v1"
    (old_container,) = served_by(sandbox)
    assert run(sandbox, new(None))[1].result == "v2"
    # The newer version evicted the old one's idle container; the new one is its own.
    assert old_container not in served_by(sandbox) and len(served_by(sandbox)) == 1
    assert [c["Id"] for c in containers(sandbox)] == list(served_by(sandbox))
    # A run still queued for the old version gets a container of the old version, never the new one.
    assert run(sandbox, old(None))[1].result == "v1"
    assert run(sandbox, new(None))[1].result == "v2"


def test_different_code_or_container_limits_never_share_a_container(sandbox, function):
    first = function("def handler(event, context):\n    return 1\n", function_id="fn-a")
    other = function("def handler(event, context):\n    return 2\n", function_id="fn-b")
    run(sandbox, first(None))
    run(sandbox, other(None))
    run(sandbox, first(None, memory_mb=96))  # same version, other container-level limit
    run(sandbox, first(None, timeout_s=3, output_bytes=2048))  # per-run limits: the same container
    keys = sorted((s.key.function_id, s.key.memory_mb) for s in sandbox.pool.idle())
    assert keys == [("fn-a", 64), ("fn-a", 96), ("fn-b", 64)]


def test_a_timeout_recycles_the_container_and_the_next_run_succeeds(sandbox, function):
    spec = function("""
        import time
        def handler(event, context):
            if event["sleep"]:
                time.sleep(600)
            return "ok"
        """)
    assert run(sandbox, spec({"sleep": False}))[1].result == "ok"
    (warm,) = served_by(sandbox)
    raw, outcome = run(sandbox, spec({"sleep": True}, timeout_s=1))
    assert outcome.error["type"] == "timeout"
    assert raw.duration_ms <= (1 + KILL_GRACE_S + 1) * 1000, raw.duration_ms  # on the sandbox's clock
    assert served_by(sandbox) == set() and [c["Id"] for c in containers(sandbox)] == []  # removed, not reused
    raw, outcome = run(sandbox, spec({"sleep": False}))
    assert outcome.status == "SUCCESS" and outcome.result == "ok"
    assert served_by(sandbox) and warm not in served_by(sandbox)


@pytest.mark.parametrize("code, limits, error_type", [
    ("data = bytearray(256 * 1024 * 1024)\n", {}, "memory_limit"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", {}, "runtime_error"),
    ("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 65536)\n", {"output_bytes": 4096}, "output_limit"),
    ("import os, time\nos.write(1, b'started')\ntime.sleep(60)\n", {"timeout_s": 1}, "timeout"),
], ids=["oom", "signal", "output", "timeout"])
def test_every_abnormal_end_recycles_the_container(sandbox, function, code, limits, error_type):
    spec = function(code, handler=None)
    raw, outcome = run(sandbox, spec(None, **limits))
    assert outcome.error["type"] == error_type, (outcome, raw.runner_stderr)
    assert sandbox.pool.idle() == [] and containers(sandbox) == []


def test_a_failing_function_keeps_its_container(sandbox, function):
    spec = function("def handler(event, context):\n    raise ValueError(event)\n")
    for n in range(2):
        assert run(sandbox, spec(n))[1].error["type"] == "runtime_error"
    assert len(served_by(sandbox)) == 1  # an exception is an ordinary end


def run_in_thread(sandbox: DockerSandbox, spec: RunSpec) -> tuple[threading.Thread, dict]:
    """A run in a thread of its own, returned once a container runs it (failing at once if the
    run ended first); the thread puts the run's RawRun under "raw"."""
    sandbox.pool  # made here, before the thread: the pool's lazy creation is not safe from two threads
    ran: dict = {}
    thread = threading.Thread(target=lambda: ran.update(raw=sandbox.run(spec)), daemon=True)
    thread.start()

    def running() -> bool:
        assert thread.is_alive(), f"the run ended before a container ran it: {ran}"
        return sandbox.running_container(spec.job_id) is not None

    eventually(running, 60, "a container runs the job", interval_s=0.02)
    return thread, ran


def joined(thread: threading.Thread) -> None:
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run did not return"


def test_cancel_from_another_process_kills_the_warm_run(sandbox, function, settings):
    spec = function("""
        import time
        def handler(event, context):
            if event:
                time.sleep(600)
            return "ok"
        """)
    run(sandbox, spec(False))
    warm = served_by(sandbox)
    job = spec(True)
    thread, ran = run_in_thread(sandbox, job)
    assert sandbox.running_container(job.job_id) in warm  # the warm container took it
    killer = subprocess.run(
        [sys.executable, "-c", "import sys; from nanogrid.config import Settings; from nanogrid.sandbox.docker import "
         "DockerSandbox; print(DockerSandbox(Settings(redis_url=sys.argv[1]), 'other').kill(sys.argv[2]))",
         settings.redis_url, job.job_id], capture_output=True, text=True, timeout=60)
    assert killer.stdout.strip() == "True", killer.stderr
    joined(thread)
    raw = ran["raw"]
    assert raw.cancelled and classify(raw, job.limits).error["type"] == "cancelled"
    assert sandbox.pool.idle() == [] and containers(sandbox) == [] and sandbox.running_container(job.job_id) is None
    assert run(sandbox, spec(False))[1].result == "ok"


def test_cancel_in_process_kills_the_warm_run(sandbox, function):
    job = function("import time\ntime.sleep(600)\n", handler=None)(None)
    thread, ran = run_in_thread(sandbox, job)
    assert sandbox.kill(job.job_id)
    joined(thread)
    assert ran["raw"].cancelled and containers(sandbox) == []


def test_the_pool_stays_within_its_size_per_version(make_sandbox, function):
    sandbox = make_sandbox(warm_pool_size=2)
    # Each run holds its container until the test creates the release file in the (mounted) code.
    spec = function("""
        import os, time
        def handler(event, context):
            while not os.path.exists("/code/release"):
                time.sleep(0.05)
            return 1
        """)
    jobs = [spec(None) for _ in range(4)]
    sandbox.pool  # made before the threads: the pool's lazy creation is not safe from two threads
    threads = [threading.Thread(target=run, args=(sandbox, job)) for job in jobs]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(sandbox.pool.busy()) == 4, 60, "four runs at once, each in a container of its own")
    finally:
        (jobs[0].code_dir / "release").touch()
        for thread in threads:
            joined(thread)
    assert len(sandbox.pool.idle()) == 2 and len(containers(sandbox)) == 2  # 4 ran at once, 2 are kept


def test_the_pool_stays_within_its_container_count_and_memory_budget(make_sandbox, function):
    sandbox = make_sandbox(warm_max_containers=3, warm_memory_budget_mb=10_000)
    for n in range(5):
        run(sandbox, function(f"def handler(event, context):\n    return {n}\n", function_id=f"fn-{n}")(None))
        assert len(sandbox.pool.idle()) <= 3 and len(containers(sandbox)) <= 3
    # Least recently used first: the last three functions are the ones kept.
    assert sorted(s.key.function_id for s in sandbox.pool.idle()) == ["fn-2", "fn-3", "fn-4"]

    budget = make_sandbox(warm_max_containers=10, warm_memory_budget_mb=150)
    for n in range(3):
        run(budget, function(f"def handler(event, context):\n    return {n}\n", function_id=f"fn-m{n}")(None))
    assert sum(s.key.memory_mb for s in budget.pool.idle()) <= 150 and len(budget.pool.idle()) == 2
    run(budget, function("def handler(event, context):\n    return 0\n", function_id="fn-big")(None, memory_mb=200))
    assert all(s.key.function_id != "fn-big" for s in budget.pool.idle())  # bigger than the whole budget


def test_idle_containers_expire(make_sandbox, function):
    sandbox = make_sandbox(warm_idle_ttl_s=1.0)
    run(sandbox, function("def handler(event, context):\n    return 1\n")(None))
    assert len(containers(sandbox)) == 1
    eventually(lambda: not containers(sandbox), 60, "the pool's own thread removes the idle container after its TTL",
               interval_s=0.2)
    assert sandbox.pool.idle() == []


def test_the_pool_disabled_gives_every_run_its_own_container(make_sandbox, function):
    sandbox = make_sandbox(warm_pool_size=0)
    spec = function("import os\ndef handler(event, context):\n    return open('/etc/hostname').read()\n")
    hosts = {run(sandbox, spec(None))[1].result for _ in range(2)}
    assert len(hosts) == 2 and containers(sandbox) == [] and sandbox.pool.idle() == []


def test_a_container_that_died_while_idle_is_replaced_transparently(sandbox, function):
    spec = function("def handler(event, context):\n    return 'fine'\n")
    run(sandbox, spec(None))
    (slot,) = sandbox.pool.idle()
    sandbox.client.api.remove_container(slot.container.id, force=True)  # say, the reaper, or an operator
    raw, outcome = run(sandbox, spec(None))
    assert outcome.result == "fine" and served_by(sandbox) and slot.container.id not in served_by(sandbox)


def test_deleted_functions_and_superseded_versions_leave_no_containers(local_settings, docker_settings):
    """Through the worker's own path: execute.run, the registry, and the pool's periodic check."""
    settings = local_settings.replace(sandbox="docker", runtime_image=docker_settings.runtime_image,
                                      docker_runtime=docker_settings.docker_runtime, reaper_interval_s=0.5)
    services = Services(settings)
    sandbox = services.sandbox
    try:
        def run_job(function) -> dict:
            job = services.jobs.create(function, {"n": 1})
            execute.run(services, job["job_id"])
            return services.jobs.get(job["job_id"])

        kept = services.functions.create("kept", bundles.from_source("def h(e, c):\n    return 'kept'\n", "h"), {})
        doomed = services.functions.create("doomed", bundles.from_source("def h(e, c):\n    return 1\n", "h"), {})
        assert run_job(kept)["result"] == "kept" and run_job(doomed)["result"] == 1
        assert len(sandbox.pool.idle()) == 2
        updated = services.functions.update(doomed["function_id"],
                                            bundles.from_source("def h(e, c):\n    return 2\n", "h"), {})
        assert updated["version"] == 2
        # No run of version 2 needed: the periodic check sees it.
        eventually(lambda: not [s for s in sandbox.pool.idle() if s.key.function_id == doomed["function_id"]],
                   60, "the superseded version's container goes", interval_s=0.2)
        assert run_job(updated)["result"] == 2
        services.functions.delete(doomed["function_id"])
        eventually(lambda: not [c for c in containers(sandbox)
                                if c["Labels"]["nanogrid.function"] == doomed["function_id"]],
                   60, "the deleted function's container goes", interval_s=0.2)
        assert [s.key.function_id for s in sandbox.pool.idle()] == [kept["function_id"]]
        assert not [d for d in sandbox.code_dirs_in_use() if doomed["function_id"] in d.name]
    finally:
        sandbox.pool.close()
        sandbox.remove_containers(keep=set())


def test_the_reaper_sweeps_warm_containers_nobody_keeps(sandbox, function, settings, tmp_path):
    """A worker process killed with SIGKILL: its containers' stdin ends, they exit, the sweep removes
    them; a live owner's idle containers stay."""
    run(sandbox, function("def handler(event, context):\n    return 1\n")(None))
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from nanogrid.config import Settings
        from nanogrid.sandbox import Limits, RunSpec
        from nanogrid.sandbox.docker import DockerSandbox
        code = Path(sys.argv[1])
        code.mkdir(mode=0o755)
        (code / "main.py").write_text("def handler(e, c):\\n    return 1\\n")
        (code / "main.py").chmod(0o644)
        sandbox = DockerSandbox(Settings(runtime_image={settings.runtime_image!r}, redis_url={settings.redis_url!r},
                                         docker_runtime={settings.docker_runtime!r}), "victim")
        limits = Limits.resolve(Settings(), {{"memory_mb": 64}})
        assert sandbox.run(RunSpec("victim-job", "fn-victim", code, "handler", limits, code_sha="x")).exit_code == 0
        print(len(sandbox.pool.idle()), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """))
    victim = subprocess.run([sys.executable, str(script), str(tmp_path / "victim-code")], capture_output=True,
                            text=True, timeout=60)
    assert victim.returncode == -signal.SIGKILL and victim.stdout == "1\n", victim.stderr
    orphans = containers(sandbox, labels=["nanogrid.function=fn-victim"])
    assert len(orphans) == 1 and not os.path.exists(f"/proc/{victim_pid(orphans[0])}")  # its owner is gone
    # Its stdin ended with its owner: it exits.
    eventually(lambda: not containers(sandbox, labels=["nanogrid.function=fn-victim"], status="running"), 60,
               "the dead worker's container exits", interval_s=0.2)
    assert sandbox.remove_containers(keep=set()) == 1
    assert containers(sandbox, labels=["nanogrid.function=fn-victim"]) == []
    assert len(containers(sandbox)) == 1 and len(served_by(sandbox)) == 1  # ours, alive and kept
    assert not containers(sandbox, labels=[LABEL_JOB])


def victim_pid(summary: dict) -> int:
    return int(summary["Labels"][LABEL_WARM].rsplit(":", 1)[1])


def test_closing_the_pool_removes_its_containers(make_sandbox, function):
    sandbox = make_sandbox()
    for n in range(3):
        run(sandbox, function(f"def handler(event, context):\n    return {n}\n", function_id=f"fn-c{n}")(None))
    assert len(containers(sandbox)) == 3
    sandbox.pool.close()
    assert containers(sandbox) == []


def test_the_code_directory_cache_keeps_what_containers_mount():
    cache = execute.CodeDirs(limit=2)
    bundle = bundles.from_source("def h(e, c):\n    return 1\n", "h").data
    mounted = set()
    first = cache.get(("t", "fn-1", 1, "a"), bundle, lambda: mounted)
    assert cache.get(("t", "fn-1", 1, "a"), bundle, lambda: mounted) == first and (first / "main.py").exists()
    assert oct(first.stat().st_mode & 0o777) == "0o755" and oct((first / "main.py").stat().st_mode & 0o777) == "0o644"
    mounted.add(first)  # a container mounts it: it stays, whatever the limit
    others = [cache.get(("t", f"fn-{n}", 1, "a"), bundle, lambda: mounted) for n in (2, 3, 4)]
    assert [p.exists() for p in [first, *others]] == [True, False, False, True] and len(cache.entries) == 2
    mounted.clear()
    cache.get(("t", "fn-5", 1, "a"), bundle, lambda: mounted)
    assert not first.exists() and len(cache.entries) == 2
