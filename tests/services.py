"""Real local servers for tests: moto (AWS APIs), gcp-storage-emulator (GCS), and helpers.

They fail instead of skipping when a server cannot start, so a broken test environment shows up
as errors rather than as a quietly green run. Both servers are started with this interpreter
(`python -m ...`), so they come from the same virtualenv as the tests whatever PATH says.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

STARTUP_TIMEOUT_S = 30
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_http(url: str, ok_only: bool = False) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return not ok_only  # any status means the server is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def running_server(name: str, command: list[str], ready_url: str) -> Iterator[None]:
    # Server logs go to a file, not a pipe: both servers log every request, and a pipe nobody
    # reads fills up and blocks them mid-test.
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except OSError as exc:
            pytest.fail(f"{name} could not be started ({' '.join(command)}): {exc}")

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not _answers_http(ready_url):
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with status {process.returncode}:\n{output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not answer {ready_url} within {STARTUP_TIMEOUT_S}s:\n{output()}")
                time.sleep(0.1)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a moto server, with dummy AWS credentials in the environment."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with pytest.MonkeyPatch.context() as env, running_server("moto server", command, f"{endpoint}/moto-api/"):
        for name, value in DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        yield endpoint


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """host:port of an in-memory gcp-storage-emulator, also exported as STORAGE_EMULATOR_HOST."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "gcp_storage_emulator", "start",
        "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet",
    ]
    with pytest.MonkeyPatch.context() as env, running_server("gcp-storage-emulator", command, f"http://{host}/"):
        # google-cloud-storage treats the variable as a URL, so it needs the scheme.
        env.setenv("STORAGE_EMULATOR_HOST", f"http://{host}")
        yield host


def wait_for_http(url: str, timeout_s: float, alive=lambda: True, ok_only: bool = False) -> bool:
    """True once url answers with any HTTP status (ok_only: with a 2xx); False on timeout or when
    alive() turns false."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if _answers_http(url, ok_only):
            return True
        time.sleep(0.1)
    return False


def job_containers(job_id: str, *, running_only: bool = False) -> list[dict]:
    """Summaries of the containers running a job: labelled with it (a single-use container), or the
    warm container a worker on this host recorded as running it (the low-level call: no
    per-container inspect, so a container removed while listing cannot make the call fail)."""
    import tempfile
    from pathlib import Path

    import docker

    from nanogrid.sandbox import LABEL_JOB
    from nanogrid.sandbox.janitor import STATE_DIR_PREFIX

    client = docker.from_env().api
    found = client.containers(all=not running_only, filters={"label": f"{LABEL_JOB}={job_id}"})
    for record in Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*/jobs/{job_id}"):
        try:
            container_id = record.read_text().split()[0]
        except (OSError, IndexError):
            continue
        found += client.containers(all=not running_only, filters={"id": container_id})
    return found
