"""End to end over HTTP against `nanogrid dev` with the Docker sandbox: the command a newcomer runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from nanogrid.sandbox.docker import KILL_GRACE_S
from support.docker import cancel_a_running_job
from support.stack import Stack

DEFAULT_TIMEOUT_S = 10
HANDLER = """
import sys
def handler(event, context):
    print("processing", event["n"])
    print("a warning", file=sys.stderr)
    return {"square": event["n"] ** 2, "job": context.job_id}
"""
SCRIPT = """
import json, sys
event = json.load(sys.stdin)
print("hello", event["name"])
"""


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory, runtime_image):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("dev"), runtime_image,
                      env={"NANOGRID_DEFAULT_TIMEOUT_S": str(DEFAULT_TIMEOUT_S)})
    yield stack
    stack.stop()


def test_banner_health_and_operator_env(dev):
    health = dev.client.health()
    assert health["status"] == "ok"
    assert health["components"]["sandbox"] == {"status": "ok", "mode": "docker", "isolated": True, "runtime": "runc"}
    assert health["components"]["worker"] == {"status": "ok", "workers": 1}
    assert dev.operator_env["NANOGRID_BROKER_URL"].startswith("redis://127.0.0.1:")
    ping = subprocess.run([sys.executable, "-m", "celery", "-A", "nanogrid", "inspect", "ping", "--timeout", "5"],
                          env={**os.environ, **dev.operator_env}, capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    log = dev.log("dev")
    assert f"NanoGrid is running at {dev.url}" in log and "Docker (isolated containers, runtime runc)" in log
    assert "auth:     OPEN: no API keys exist" in log  # a fresh data dir has no key store entries


def test_handler_sync_run(dev):
    function_id = dev.client.create("square", HANDLER)["function_id"]
    job = dev.client.invoke(function_id, {"n": 7}, wait_s=60)
    assert job["status"] == "SUCCESS", job
    assert job["result"] == {"square": 49, "job": job["job_id"]}
    assert job["stdout"] == "processing 7\n" and job["stderr"] == "a warning\n"


def test_script_async_run(dev):
    function_id = dev.client.create("hello", SCRIPT)["function_id"]
    queued = dev.client.invoke(function_id, {"name": "NanoGrid"}, wait_s=0)
    assert queued["status"] == "PENDING"
    job = dev.client.wait(queued["job_id"], 60)
    assert job["status"] == "SUCCESS", job
    assert job["stdout"] == "hello NanoGrid\n" and job["result"] is None


@pytest.mark.parametrize("name, code, extra, error_type", [
    ("raises", "def handler(e, c):\n    raise RuntimeError('kaput')\n", {}, "runtime_error"),
    ("exits", "import sys\nprint('bye')\nsys.exit(4)\n", {}, "runtime_error"),
    ("sleeps", "import time\ntime.sleep(60)\n", {"timeout_s": 2}, "timeout"),
    ("hogs", "x = bytearray(512 * 1024 * 1024)\n", {"memory_mb": 64}, "memory_limit"),
])
def test_failures(dev, name, code, extra, error_type):
    job = dev.client.invoke(dev.client.create(name, code, **extra)["function_id"], None, wait_s=60)
    assert job["status"] == "FAILED", job
    assert job["error"]["type"] == error_type, job
    # No run outlasts its timeout (the function's, or the stack's default) by more than the kill's grace.
    assert job["duration_ms"] <= (extra.get("timeout_s", DEFAULT_TIMEOUT_S) + KILL_GRACE_S + 1) * 1000, job
    if name == "raises":
        assert "RuntimeError: kaput" in job["stderr"] and "Traceback" in job["stderr"]
    if name == "exits":
        assert job["exit_code"] == 4 and job["stdout"] == "bye\n"


def test_cli_deploy_invoke_job(dev, tmp_path):
    source = tmp_path / "greet.py"
    source.write_text("def handler(event, context):\n    return 'hi ' + event['name']\n")
    env = {**os.environ, "NANOGRID_URL": dev.url}
    cli = [sys.executable, "-m", "nanogrid.cli"]
    deployed = subprocess.run([*cli, "deploy", str(source), "--name", "greet"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert deployed.returncode == 0 and "deployed greet" in deployed.stdout, deployed.stderr
    invoked = subprocess.run([*cli, "invoke", "greet", "--input", '{"name": "CLI"}'], env=env, capture_output=True,
                             text=True, timeout=60)
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert "SUCCESS" in invoked.stdout and '"hi CLI"' in invoked.stdout
    failing = subprocess.run([*cli, "invoke", "greet", "--input", '{}', "--json"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert failing.returncode == 1 and '"runtime_error"' in failing.stdout


def test_cancel_a_running_job(dev):
    cancel_a_running_job(dev, "dev", "import time\ntime.sleep(120)\n")


def test_ctrl_c_stops_everything(dev):
    assert dev.procs["dev"].stop(signal.SIGINT) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{dev.url}/health", timeout=5)
