"""Stem cells (nanogrid/sandbox/warm.py): containers started before any function is known. The
first run of a version takes one, and from then on it serves that version of that tenant only;
what the run finds in it (files, processes, environment) is what it finds in a container started
for it, so nothing of a stem cell's life before the claim is visible."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import pytest

from nanogrid.limits import Limits
from nanogrid.sandbox.docker import DockerSandbox
from support.runs import Function
from support.waiting import eventually

pytestmark = pytest.mark.runtimes("runc", "crun", "runsc")

LOOK_AROUND = """
import os

def handler(event, context):
    processes = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    processes.append(f.read().replace(b"\\0", b" ").decode().strip())
            except OSError:
                pass
    files = []
    for top in ("/code", "/tmp", "/dev/shm", "/run/secrets"):
        for folder, _, names in os.walk(top):
            files += [os.path.join(folder, name) for name in names]
    try:
        open("/code/main.py", "a").close()
        code_writable = True
    except OSError:
        code_writable = False
    return {"container": open("/etc/hostname").read().strip(), "files": sorted(files),
            "processes": sorted(processes), "environ": {k: v for k, v in os.environ.items() if k != "HOSTNAME"},
            "cwd": os.getcwd(), "code_writable": code_writable, "version": context.function_version}
"""


@pytest.fixture
def stem_sandbox(docker_settings) -> Iterator[DockerSandbox]:
    sandbox = DockerSandbox(docker_settings.replace(stem_cells=1), "test-worker")
    sandbox.start_stem_cells()
    yield sandbox
    sandbox.pool.close()
    sandbox.remove_containers(keep=set())


@pytest.fixture
def plain_sandbox(docker_settings) -> Iterator[DockerSandbox]:
    sandbox = DockerSandbox(docker_settings.replace(stem_cells=0), "test-worker-plain")
    yield sandbox
    sandbox.pool.close()


def look(sandbox: DockerSandbox, function: Function, **changes) -> dict:
    spec = dataclasses.replace(function.spec(), limits=Limits.resolve(sandbox.settings), **changes)
    raw = sandbox.run(spec)
    assert raw.exit_code == 0 and raw.result and raw.result.get("ok"), (raw.stderr, raw.runner_stderr, raw.result)
    return raw.result["value"]


def ready_stem(sandbox: DockerSandbox, other_than: str = "") -> str:
    eventually(lambda: [s for s in sandbox.pool.stems() if s.container.id[:12] != other_than], 60,
               "a stem cell is ready", interval_s=0.1)
    return sandbox.pool.stems()[0].container.id[:12]


def test_a_claimed_stem_cell_serves_one_version_of_one_tenant(stem_sandbox, tmp_path):
    function = Function(tmp_path, LOOK_AROUND)
    stem = ready_stem(stem_sandbox)
    first = look(stem_sandbox, function, tenant="tenant-a")
    assert first["container"] == stem  # the run did not wait for a container of its own
    refilled = ready_stem(stem_sandbox, other_than=stem)  # a new one, started in the background
    assert refilled != stem
    assert look(stem_sandbox, function, tenant="tenant-a")["container"] == stem  # its version's warm container
    # Another tenant, and a newer version of the same function: never the claimed container.
    assert look(stem_sandbox, function, tenant="tenant-b")["container"] != stem
    claimed = [s for s in stem_sandbox.pool.idle() if s.container.id[:12] == stem]
    assert [(s.key.tenant, s.key.version) for s in claimed] == [("tenant-a", 1)]
    assert claimed[0].container.labels.get("nanogrid.stem") == "1"
    newer = look(stem_sandbox, function, tenant="tenant-a", version=2)
    assert newer["container"] != stem and newer["version"] == 2


def test_a_claimed_stem_cell_holds_nothing_from_before(stem_sandbox, plain_sandbox, tmp_path):
    """What a run sees in a claimed stem cell equals what it sees in a container started for it."""
    function = Function(tmp_path, LOOK_AROUND)
    stem = ready_stem(stem_sandbox)
    in_stem = look(stem_sandbox, function, tenant="tenant-a")
    fresh = look(plain_sandbox, function, tenant="tenant-a")
    assert in_stem["container"] == stem and fresh["container"] != stem
    assert in_stem["files"] == fresh["files"] == ["/code/main.py"]
    assert in_stem["processes"] == fresh["processes"], (in_stem["processes"], fresh["processes"])
    assert in_stem["environ"] == fresh["environ"]
    assert in_stem["cwd"] == fresh["cwd"] == "/code"
    assert in_stem["code_writable"] is fresh["code_writable"] is False  # its code folder is read-only to the run


def test_functions_outside_the_stem_class_start_their_own(stem_sandbox, tmp_path):
    """Other limits than the defaults: a container made for them; the stem cell stays a spare."""
    function = Function(tmp_path, LOOK_AROUND)
    stem = ready_stem(stem_sandbox)
    defaults = Limits.resolve(stem_sandbox.settings)
    spec = dataclasses.replace(function.spec(), limits=dataclasses.replace(defaults, memory_mb=defaults.memory_mb // 2))
    raw = stem_sandbox.run(spec)
    assert raw.result and raw.result["value"]["container"] != stem
    assert [s.container.id[:12] for s in stem_sandbox.pool.stems()] == [stem]
