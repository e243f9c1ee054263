"""Fixtures shared by every test layer: real redis-server, moto, GCS emulator, dockerd + runtime image."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox.docker import connect
from nanogrid.sandbox.image import build_image, image_status
from services import free_port, gcs_emulator, moto_server  # noqa: F401 - session fixtures


# The Docker sandbox's OCI runtimes (README: Sandbox runtimes). A module names the ones its tests
# run under with `pytest.mark.runtimes(...)` (default: runc alone); every test that takes the
# fixture `docker_runtime`, or one built on it (`docker_settings`), then runs once per runtime,
# module by module (a module-scoped stack is started once per runtime). NANOGRID_TEST_RUNTIMES
# (comma-separated) narrows that down for a quick local run; CI runs them all.
def pytest_configure(config):
    config.addinivalue_line("markers", "runtimes(*names): the OCI runtimes the module's Docker tests run under")


def pytest_generate_tests(metafunc):
    if "docker_runtime" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("runtimes")
        runtimes = list(marker.args) if marker else ["runc"]
        if os.environ.get("NANOGRID_TEST_RUNTIMES"):
            runtimes = [name for name in runtimes if name in os.environ["NANOGRID_TEST_RUNTIMES"].split(",")]
        metafunc.parametrize("docker_runtime", runtimes, scope="module")


@pytest.fixture
def docker_settings(runtime_image, docker_runtime) -> Settings:
    """runtime_image's settings with the test's OCI runtime."""
    return runtime_image.replace(docker_runtime=docker_runtime)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server (Debian's) on a free port; fails, never skips, when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the suite with ./scripts/test, which installs it")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def local_settings(tmp_path: Path, redis_url: str) -> Settings:
    """Embedded storage in a fresh folder, a flushed Redis, the process sandbox."""
    redis.Redis.from_url(redis_url).flushdb()
    return Settings.from_env({
        "NANOGRID_DATA_DIR": str(tmp_path / "data"),
        "NANOGRID_REDIS_URL": redis_url,
        "NANOGRID_SANDBOX": "process",
    })


@pytest.fixture(scope="session")
def runtime_image() -> Settings:
    """Settings whose runtime image exists and is current, built offline (rootfs) if it is not.

    Fails, never skips, when dockerd is unreachable: a missing dockerd must not pass as green.
    """
    settings = Settings().replace(runtime_image=os.environ.get("NANOGRID_RUNTIME_IMAGE", Settings.runtime_image))
    try:
        connect()
    except Unavailable as exc:
        pytest.fail(f"the Docker sandbox tests need a running dockerd: {exc}")
    ready, message = image_status(settings)
    if not ready:
        print(message)
        build_image(settings, method="rootfs", log=print)
    return settings
