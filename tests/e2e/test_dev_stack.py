"""End to end over HTTP against `nanogrid dev` with the Docker sandbox: the command a newcomer runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from services import free_port, job_containers

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

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
def dev(tmp_path_factory, runtime_image):
    data_dir = tmp_path_factory.mktemp("dev")
    port = free_port()
    log = open(data_dir / "dev.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "nanogrid.cli", "dev", "--sandbox", "docker", "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NANOGRID_DEFAULT_TIMEOUT_S": "10"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not (data_dir / "operator.env").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("nanogrid dev did not come up:\n" + (data_dir / "dev.log").read_text()[-3000:])
        time.sleep(0.2)
    yield {"url": url, "data_dir": data_dir, "process": process}
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    log.close()


def deploy(dev, name, code, **extra):
    response = requests.post(f"{dev['url']}/functions", json={"name": name, "code": code, **extra}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["function_id"]


def run(dev, function_id, event=None, wait_s=60):
    response = requests.post(f"{dev['url']}/functions/{function_id}/run", json={"input": event, "wait_s": wait_s},
                             timeout=wait_s + 30)
    assert response.status_code in (200, 202), response.text
    return response


def test_banner_health_and_operator_env(dev):
    health = requests.get(f"{dev['url']}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["components"]["sandbox"] == {"status": "ok", "mode": "docker", "isolated": True, "runtime": "runc"}
    assert health["components"]["worker"] == {"status": "ok", "workers": 1}
    exports = (dev["data_dir"] / "operator.env").read_text()
    assert "export NANOGRID_BROKER_URL=redis://127.0.0.1:" in exports
    env = dict(os.environ)
    for line in exports.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    ping = subprocess.run([sys.executable, "-m", "celery", "-A", "nanogrid", "inspect", "ping", "--timeout", "5"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    log = (dev["data_dir"] / "dev.log").read_text()
    assert f"NanoGrid is running at {dev['url']}" in log and "Docker (isolated containers, runtime runc)" in log
    assert "auth:     OPEN: no API keys exist" in log  # a fresh data dir has no key store entries


def test_handler_sync_run(dev):
    function_id = deploy(dev, "square", HANDLER)
    response = run(dev, function_id, {"n": 7})
    job = response.json()
    assert response.status_code == 200, job
    assert job["status"] == "SUCCESS", job
    assert job["result"] == {"square": 49, "job": job["job_id"]}
    assert job["stdout"] == "processing 7\n" and job["stderr"] == "a warning\n"


def test_script_async_run(dev):
    function_id = deploy(dev, "hello", SCRIPT)
    response = run(dev, function_id, {"name": "NanoGrid"}, wait_s=0)
    assert response.status_code == 202
    location = response.headers["Location"]
    deadline = time.monotonic() + 60
    while True:
        job = requests.get(dev["url"] + location, timeout=10).json()
        if job["status"] in ("SUCCESS", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "SUCCESS", job
    assert job["stdout"] == "hello NanoGrid\n" and job["result"] is None


@pytest.mark.parametrize("name, code, extra, error_type", [
    ("raises", "def handler(e, c):\n    raise RuntimeError('kaput')\n", {}, "runtime_error"),
    ("exits", "import sys\nprint('bye')\nsys.exit(4)\n", {}, "runtime_error"),
    ("sleeps", "import time\ntime.sleep(60)\n", {"timeout_s": 2}, "timeout"),
    ("hogs", "x = bytearray(512 * 1024 * 1024)\n", {"memory_mb": 64}, "memory_limit"),
])
def test_failures(dev, name, code, extra, error_type):
    started = time.monotonic()
    job = run(dev, deploy(dev, name, code, **extra)).json()
    assert job["status"] == "FAILED", job
    assert job["error"]["type"] == error_type, job
    assert time.monotonic() - started < 30
    if name == "raises":
        assert "RuntimeError: kaput" in job["stderr"] and "Traceback" in job["stderr"]
    if name == "exits":
        assert job["exit_code"] == 4 and job["stdout"] == "bye\n"


def test_cli_deploy_invoke_job(dev, tmp_path):
    source = tmp_path / "greet.py"
    source.write_text("def handler(event, context):\n    return 'hi ' + event['name']\n")
    env = {**os.environ, "NANOGRID_URL": dev["url"]}
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
    function_id = deploy(dev, "cancel-running", "import time\ntime.sleep(120)\n", timeout_s=300)
    job = run(dev, function_id, wait_s=0).json()
    deadline = time.monotonic() + 30
    while not job_containers(job["job_id"], running_only=True):
        assert time.monotonic() < deadline, "the run never started a container"
        time.sleep(0.2)
    response = requests.post(f"{dev['url']}/jobs/{job['job_id']}/cancel", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "FAILED" and response.json()["error"]["type"] == "cancelled"
    cancelled_at = time.monotonic()
    while job_containers(job["job_id"]):
        assert time.monotonic() - cancelled_at < 15, "the cancelled run's container is still there"
        time.sleep(0.2)
    time.sleep(1)
    assert requests.get(f"{dev['url']}/jobs/{job['job_id']}", timeout=10).json()["error"]["type"] == "cancelled"


def test_ctrl_c_stops_everything(dev):
    process = dev["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{dev['url']}/health", timeout=5)
