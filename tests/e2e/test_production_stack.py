"""The production path with real local servers and real processes.

gunicorn (`nanogrid api`) and a Celery worker (`nanogrid worker`) talk to an SQS broker and
S3/DynamoDB on moto server, Redis (result backend and job state) on redis-server, the GCS
archive on gcp-storage-emulator, and dockerd. Only endpoints differ from a real deployment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from nanogrid.config import Settings
from nanogrid.storage.provision import ensure_resources
from nanogrid.task_names import RUN_TASK
from nanogrid.transport.broker import Broker
from services import free_port, job_containers, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.integration]

LEASE_S = 3
REAPER_INTERVAL_S = 1
VISIBILITY_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_server, gcs_emulator, redis_url, runtime_image):
    workdir = tmp_path_factory.mktemp("prod")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="ap-northeast-2")
    queue_url = sqs.create_queue(QueueName="nanogrid-task-queue",
                                 Attributes={"VisibilityTimeout": str(VISIBILITY_TIMEOUT_S)})["QueueUrl"]
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    api_port = free_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server, "AWS_REGION": "ap-northeast-2",
        "SQS_QUEUE_URL": queue_url,
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": redis_port,
        "S3_CODE_BUCKET": "nanogrid-code-bucket", "S3_USER_DATA_BUCKET": "nanogrid-user-data-123456789012",
        "GCP_BUCKET_NAME": "nanogrid-archive",
        "NANOGRID_STORAGE": "aws", "NANOGRID_SANDBOX": "docker",
        "NANOGRID_LEASE_S": str(LEASE_S), "NANOGRID_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
        "NANOGRID_SQS_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "NANOGRID_WORKER_CONCURRENCY": "2",
        "NANOGRID_BIND": f"127.0.0.1:{api_port}",
        "NANOGRID_RUNTIME_IMAGE": runtime_image.runtime_image,
    }
    env.pop("NANOGRID_BROKER_URL", None)
    env.pop("NANOGRID_REDIS_URL", None)
    settings = Settings.from_env(env)
    ensure_resources(settings)
    cli = [sys.executable, "-m", "nanogrid.cli"]
    logs = {name: open(workdir / f"{name}.log", "wb") for name in ("api", "worker")}

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen([*cli, "worker", "-n", f"prod-{os.getpid()}@%h"], env=env,
                                stdout=logs["worker"], stderr=subprocess.STDOUT)

    processes = {
        "api": subprocess.Popen([*cli, "api"], env=env, stdout=logs["api"], stderr=subprocess.STDOUT),
        "worker": start_worker(),
    }
    url = f"http://127.0.0.1:{api_port}"

    def log_tail() -> str:
        return "\n".join(f"--- {n}\n{(workdir / f'{n}.log').read_text()[-3000:]}" for n in logs)

    if not wait_for_http(url + "/health", 60, lambda: all(p.poll() is None for p in processes.values()), ok_only=True):
        pytest.fail("the production stack did not come up\n" + log_tail())
    yield {"url": url, "env": env, "settings": settings, "processes": processes, "log_tail": log_tail,
           "start_worker": start_worker, "workdir": workdir}
    for process in processes.values():
        process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def deploy(stack, name, code, **extra) -> str:
    response = requests.post(stack["url"] + "/functions", json={"name": name, "code": code, **extra}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["function_id"]


def run(stack, function_id, event=None, wait_s=60) -> dict:
    response = requests.post(f"{stack['url']}/functions/{function_id}/run", json={"input": event, "wait_s": wait_s},
                             timeout=wait_s + 30)
    assert response.status_code in (200, 202), response.text
    return response.json()


def wait_terminal(stack, job_id, timeout_s) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = requests.get(f"{stack['url']}/jobs/{job_id}", timeout=10).json()
        if job["status"] in ("SUCCESS", "FAILED") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def archived(stack) -> list[str]:
    client = gcs.Client(project="test", credentials=AnonymousCredentials())
    return sorted(blob.name for blob in client.list_blobs("nanogrid-archive"))


def run_starts(stack, job_id: str) -> int:
    """How many times a worker started running the job (claimed it): its "run started" log lines.
    A warm container serves many jobs, so Docker's container starts no longer count runs."""
    lines = (stack["workdir"] / "worker.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "run started" in line and job_id in line)


def test_health_names_every_component(stack):
    health = requests.get(stack["url"] + "/health", timeout=10).json()
    assert health["status"] == "ok", health
    assert set(health["components"]) >= {"redis", "functions", "jobs", "broker", "worker", "sandbox"}


def test_run_on_sqs_and_archive_only_successful_versions(stack):
    function_id = deploy(stack, "prod-adder", "def handler(event, context):\n    return sum(event)\n")
    job = run(stack, function_id, [1, 2, 3])
    assert job["status"] == "SUCCESS", (job, stack["log_tail"]())
    assert job["result"] == 6
    assert run(stack, function_id, [4])["result"] == 4
    broken = requests.put(f"{stack['url']}/functions/{function_id}",
                          json={"code": "def handler(event, context):\n    raise ValueError(event)\n"}, timeout=30)
    assert broken.json()["version"] == 2
    assert run(stack, function_id, [1])["error"]["type"] == "runtime_error"
    deadline = time.monotonic() + 30
    # Archive and code store keys carry the tenant: an open API acts for the tenant "default".
    while f"default/{function_id}/v1.zip" not in archived(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # room for a wrongly queued second archive of v1 or v2 to show up
    mine = [name for name in archived(stack) if name.startswith(f"default/{function_id}")]
    assert mine == [f"default/{function_id}/v1.zip"], mine
    s3 = boto3.client("s3", endpoint_url=stack["env"]["AWS_ENDPOINT_URL"], region_name="ap-northeast-2")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="nanogrid-code-bucket")["Contents"]]
    assert f"default/functions/{function_id}/v1.zip" in keys and f"default/functions/{function_id}/v2.zip" in keys


def test_a_run_three_times_longer_than_the_visibility_timeout_executes_once(stack):
    function_id = deploy(stack, "prod-long", "import time\ndef handler(event, context):\n"
                                             f"    time.sleep({3 * VISIBILITY_TIMEOUT_S})\n    return 'done'\n")
    job = run(stack, function_id, None, wait_s=60)
    assert job["status"] == "SUCCESS" and job["result"] == "done", job
    time.sleep(VISIBILITY_TIMEOUT_S + 2)  # a redelivery, if any, would start a second run now
    assert run_starts(stack, job["job_id"]) == 1


def worker_lines(stack, job_id: str, text: str) -> int:
    lines = (stack["workdir"] / "worker.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if text in line and job_id in line)


def test_a_duplicate_message_does_not_run_the_job_again(stack):
    function_id = deploy(stack, "prod-dup", "def handler(event, context):\n    return 1\n")
    job = run(stack, function_id)
    assert job["status"] == "SUCCESS"
    Broker(stack["settings"]).send(RUN_TASK, [job["job_id"]])
    # Delivered and refused: the worker says so, which proves the duplicate reached it.
    deadline = time.monotonic() + 60
    while not worker_lines(stack, job["job_id"], "message dropped"):
        assert time.monotonic() < deadline, "the duplicate message never reached a worker\n" + stack["log_tail"]()
        time.sleep(0.2)
    assert run_starts(stack, job["job_id"]) == 1
    assert wait_terminal(stack, job["job_id"], 1)["finished_at"] == job["finished_at"]


def test_kill_9_of_the_pool_process_fails_the_job_as_worker_lost(stack):
    function_id = deploy(stack, "prod-victim", "import time\ntime.sleep(120)\n", timeout_s=300)
    job = run(stack, function_id, wait_s=0)
    deadline = time.monotonic() + 30
    while not job_containers(job["job_id"], running_only=True):
        assert time.monotonic() < deadline, "the run never started a container"
        time.sleep(0.2)
    holder = stack_job_holder(stack, job["job_id"])
    os.kill(holder, signal.SIGKILL)
    killed_at = time.monotonic()
    final = wait_terminal(stack, job["job_id"], 30)
    assert final["status"] == "FAILED" and final["error"]["type"] == "worker_lost", final
    bound = LEASE_S + 2 * REAPER_INTERVAL_S + 2
    assert time.monotonic() - killed_at < bound + 3
    while job_containers(job["job_id"]):
        assert time.monotonic() - killed_at < 30, "the killed run's container was not removed"
        time.sleep(0.5)
    assert stack["processes"]["worker"].poll() is None
    assert run(stack, deploy(stack, "prod-after", "def handler(e, c):\n    return 'alive'\n"))["result"] == "alive"


def stack_job_holder(stack, job_id: str) -> int:
    from nanogrid.services import Services

    record = Services(stack["settings"]).jobs.get(job_id)
    deadline = time.monotonic() + 10
    while record["worker_id"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        record = Services(stack["settings"]).jobs.get(job_id)
    return int(record["worker_id"].rsplit(":", 1)[1])


def test_kill_9_of_the_whole_worker_fails_the_job_and_a_restarted_worker_removes_its_container(stack):
    function_id = deploy(stack, "prod-victim-2", "import time\ntime.sleep(120)\n", timeout_s=300)
    job = run(stack, function_id, wait_s=0)
    deadline = time.monotonic() + 30
    while not job_containers(job["job_id"], running_only=True):
        assert time.monotonic() < deadline, "the run never started a container"
        time.sleep(0.2)
    worker = stack["processes"]["worker"]
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    for pid in [worker.pid, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)
    worker.wait()
    killed_at = time.monotonic()
    # systemd restarts a dead worker in production; the new one's reaper cleans up after the old.
    stack["processes"]["worker"] = stack["start_worker"]()
    final = wait_terminal(stack, job["job_id"], 60)
    assert final["status"] == "FAILED" and final["error"]["type"] == "worker_lost", final
    while job_containers(job["job_id"]):
        assert time.monotonic() - killed_at < 60, "the dead worker's container was not removed"
        time.sleep(0.5)
    assert run(stack, deploy(stack, "prod-after-2", "def handler(e, c):\n    return 'alive'\n"))["result"] == "alive"


def test_cancel_a_running_job(stack):
    function_id = deploy(stack, "cancel-running", "import time\ntime.sleep(120)\n", timeout_s=300)
    job = run(stack, function_id, wait_s=0)
    deadline = time.monotonic() + 30
    while not job_containers(job["job_id"], running_only=True):
        assert time.monotonic() < deadline, "the run never started a container"
        time.sleep(0.2)
    response = requests.post(f"{stack['url']}/jobs/{job['job_id']}/cancel", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "FAILED" and response.json()["error"]["type"] == "cancelled"
    cancelled_at = time.monotonic()
    while job_containers(job["job_id"]):
        assert time.monotonic() - cancelled_at < 15, "the cancelled run's container is still there"
        time.sleep(0.2)
    time.sleep(1)
    assert requests.get(f"{stack['url']}/jobs/{job['job_id']}", timeout=10).json()["error"]["type"] == "cancelled"
