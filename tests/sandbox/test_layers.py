"""Layers: a run's installed third-party packages (a pip --target tree, RunSpec.layer_dir) are on its
import path right after its code and before the runtime's own folder, in every run; read-only in
a container (mounted at /opt/layer), and part of what a warm container is for."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from nanogrid.config import Settings
from nanogrid.sandbox.docker import DockerSandbox
from nanogrid.sandbox.process import ProcessSandbox
from support.runs import Function, readable_tree

CODE = """
import os, socket, sys
import mypkg
def handler(event, context):
    try:
        with open(os.path.join(os.path.dirname(mypkg.__file__), "written"), "w") as f:
            f.write("x")
        wrote = "written"
    except OSError as exc:
        wrote = type(exc).__name__ + ": " + exc.strerror
    return {"value": mypkg.VALUE, "file": mypkg.__file__, "path": sys.path[:3], "wrote": wrote,
            "host": socket.gethostname()}
"""


def layer(tmp_path: Path, value: int) -> Path:
    directory = tmp_path / f"layer-{value}"
    (directory / "mypkg").mkdir(parents=True)
    (directory / "mypkg" / "__init__.py").write_text(f"VALUE = {value}\n")
    return readable_tree(directory)


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def sandbox(request) -> Iterator:
    if request.param == "process":
        yield ProcessSandbox(Settings(), "test-worker")
        return
    # Reached at run time, hence the mark on the parameter.
    docker = DockerSandbox(request.getfixturevalue("runtime_image"), "test-worker")
    yield docker
    docker.pool.close()


@pytest.mark.parametrize("init", ["once", "per_run"])
def test_a_layer_is_importable_right_after_the_code(sandbox, tmp_path, init):
    packages = layer(tmp_path, 42)
    raw, outcome = Function(tmp_path, CODE, init=init).run(sandbox, layer_dir=packages)
    assert outcome.status == "SUCCESS", (outcome, raw.stderr, raw.runner_stderr)
    result = outcome.result
    assert result["value"] == 42
    if isinstance(sandbox, DockerSandbox):
        assert result["file"] == "/opt/layer/mypkg/__init__.py"
        assert result["path"] == ["/code", "/opt/layer", "/opt/nanogrid"]
        assert result["wrote"].startswith("OSError: Read-only file system"), result["wrote"]
    else:
        assert result["file"] == str(packages / "mypkg" / "__init__.py")
        assert result["path"][1] == str(packages)


def test_without_a_layer_there_is_nothing_to_import(sandbox, tmp_path):
    raw, outcome = Function(tmp_path, CODE).run(sandbox)
    assert outcome.status == "FAILED" and "ModuleNotFoundError: No module named 'mypkg'" in raw.stderr.decode()


def test_a_warm_container_serves_one_layer(runtime_image, tmp_path):
    sandbox = DockerSandbox(runtime_image, "test-worker")
    try:
        function = Function(tmp_path, CODE)
        first, second = layer(tmp_path, 1), layer(tmp_path, 2)
        results = [function.run(sandbox, layer_dir=packages)[1].result for packages in (first, second, first)]
    finally:
        sandbox.pool.close()
    assert [r["value"] for r in results] == [1, 2, 1]
    # Another layer is another container; the first layer's container served its next run.
    assert results[0]["host"] != results[1]["host"] and results[2]["host"] == results[0]["host"]
