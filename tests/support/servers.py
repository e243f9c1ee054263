"""Real local servers for the tests: redis-server, moto (AWS APIs), gcp-storage-emulator (GCS).

Each fails the test instead of skipping when it cannot start, so a broken test environment shows
up as errors rather than as a quietly green run. moto and the emulator are started with this
interpreter (`python -m ...`), so they come from the same virtualenv as the tests whatever PATH
says; redis-server is Debian's.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

STARTUP_TIMEOUT_S = 60
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers_http(url: str, ok_only: bool = False) -> bool:
    """Whether url answers with any HTTP status (ok_only: with a 2xx)."""
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return not ok_only  # any status means the server is up
    except OSError:
        return False
    return True


def wait_for_http(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True,
                  ok_only: bool = False) -> bool:
    """True once url answers with any HTTP status (ok_only: with a 2xx); False on timeout or when
    alive() turns false."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if answers_http(url, ok_only):
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_server(name: str, command: list[str], ready: Callable[[], bool]) -> Iterator[None]:
    """command running until the block ends, once ready() holds."""
    # Server logs go to a file, not a pipe: the servers log every request, and a pipe nobody
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
            while not ready():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with status {process.returncode}:\n{output()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} was not ready within {STARTUP_TIMEOUT_S} s:\n{output()}")
                time.sleep(0.1)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def redis_command(port: int, workdir: Path) -> list[str]:
    """redis-server on port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run the suite with ./scripts/test, which installs it")
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]


def redis_answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """The URL (database 0) of a redis-server on a free port, without persistence."""
    port = free_port()
    with running_server("redis-server", redis_command(port, workdir), lambda: redis_answers(port)):
        yield f"redis://127.0.0.1:{port}/0"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto server (every AWS API the suite uses)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running_server("moto server", command, lambda: answers_http(f"{endpoint}/moto-api/")):
        yield endpoint


@contextlib.contextmanager
def gcs_emulator() -> Iterator[str]:
    """host:port of an in-memory gcp-storage-emulator."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
               "--in-memory", "--quiet"]
    with running_server("gcp-storage-emulator", command, lambda: answers_http(f"http://{host}/")):
        yield host


def redis_database(redis_url: str, db: int) -> str:
    """The same server's database db: a stack of its own, out of reach of the tests that flush 0."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"
