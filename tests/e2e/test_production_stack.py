"""The production path with real local servers and real processes.

gunicorn (`nanogrid api`) and a Celery worker (`nanogrid worker`) talk to an SQS broker and
S3/DynamoDB on moto server, Redis (result backend and job state) on redis-server, the GCS
archive on gcp-storage-emulator, and dockerd. Only endpoints differ from a real deployment.
"""

from __future__ import annotations

import os
import signal

import boto3
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from nanogrid.services import Services
from nanogrid.task_names import ARCHIVE_TASK, RUN_TASK
from nanogrid.transport.broker import Broker
from nanogrid.transport.depth import queue_depth
from support.docker import await_job_container, await_no_job_container, cancel_a_running_job
from support.stack import Stack
from support.waiting import eventually

# Long enough that a healthy run's renewals are never late, however busy the machine.
LEASE_S = 10
REAPER_INTERVAL_S = 1
VISIBILITY_TIMEOUT_S = 3
SLEEPS = "import time\ntime.sleep(120)\n"
ALIVE = "def handler(e, c):\n    return 'alive'\n"


@pytest.fixture(scope="module")
def stack(processes, tmp_path_factory, moto_server, gcs_emulator, redis_url, runtime_image):
    running = Stack.production(processes, tmp_path_factory.mktemp("prod"), moto_server=moto_server,
                               gcs_emulator=gcs_emulator, redis_url=redis_url, runtime_image=runtime_image, env={
                                   "NANOGRID_LEASE_S": str(LEASE_S),
                                   "NANOGRID_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
                                   "NANOGRID_SQS_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
                               })
    yield running
    running.stop()


def archived(stack) -> list[str]:
    client = gcs.Client(project="test", credentials=AnonymousCredentials())
    return sorted(blob.name for blob in client.list_blobs(stack.settings.gcp_bucket_name))


def run_starts(stack, job_id: str) -> int:
    """How many times a worker started running the job (claimed it): its "run started" log lines.
    A warm container serves many jobs, so Docker's container starts no longer count runs."""
    return len(stack.lines("worker", "run started", job_id))


def queue_is_empty(stack) -> bool:
    """No message waiting and none delivered but unacknowledged: nothing queued can run again."""
    depth = queue_depth(stack.settings)
    return depth.visible == 0 and depth.in_flight == 0


def archive_tasks_settled(stack) -> bool:
    """Every archive task the worker received has ended (succeeded, or raised)."""
    received, ended = set(), set()
    for doc in stack.records("worker"):
        message = doc.get("message", "")
        if message.startswith(f"Task {ARCHIVE_TASK}["):
            task_id = message.split("[", 1)[1].split("]", 1)[0]
            if message.endswith("] received"):
                received.add(task_id)
            elif " succeeded in " in message or " raised " in message:
                ended.add(task_id)
    return received <= ended


def test_health_names_every_component(stack):
    health = stack.client.health()
    assert health["status"] == "ok", health
    assert set(health["components"]) >= {"redis", "functions", "jobs", "broker", "worker", "sandbox"}


def test_run_on_sqs_and_archive_only_successful_versions(stack):
    api = stack.client
    function_id = api.create("prod-adder", "def handler(event, context):\n    return sum(event)\n")["function_id"]
    job = api.invoke(function_id, [1, 2, 3], wait_s=60)
    assert job["status"] == "SUCCESS", (job, stack.log_tail())
    assert job["result"] == 6
    assert api.invoke(function_id, [4], wait_s=60)["result"] == 4
    broken = api.update(function_id, code="def handler(event, context):\n    raise ValueError(event)\n")
    assert broken["version"] == 2
    failed = api.invoke(function_id, [1], wait_s=60)
    assert failed["error"]["type"] == "runtime_error", failed
    # Whatever the v2 run queued, it queued before Celery logged its end; once the queue is empty
    # and every archive task received has ended, a wrongly queued archive of v2 would be stored.
    # A FAILED job is a failed task, an expected one (nanogrid.worker.tasks.RunFailed).
    eventually(lambda: [d for d in stack.records("worker") if d.get("job_id") == failed["job_id"]
                        and d.get("message", "").startswith(f"Task {RUN_TASK}[")
                        and " raised expected: RunFailed" in d["message"]],
               60, "Celery logs the end of the v2 run's task")
    eventually(lambda: queue_is_empty(stack) and archive_tasks_settled(stack), 60,
               "the task queue is empty and every archive task has ended")
    # Archive and code store keys carry the tenant: an open API acts for the tenant "default".
    mine = [name for name in archived(stack) if name.startswith(f"default/{function_id}")]
    assert mine == [f"default/{function_id}/v1.zip"], mine
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"], region_name=stack.env["AWS_REGION"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.settings.s3_code_bucket)["Contents"]]
    assert f"default/functions/{function_id}/v1.zip" in keys and f"default/functions/{function_id}/v2.zip" in keys


def test_a_run_three_times_longer_than_the_visibility_timeout_executes_once(stack):
    function_id = stack.client.create("prod-long", "import time\ndef handler(event, context):\n"
                                                   f"    time.sleep({3 * VISIBILITY_TIMEOUT_S})\n"
                                                   "    return 'done'\n")["function_id"]
    job = stack.client.invoke(function_id, None, wait_s=60)
    assert job["status"] == "SUCCESS" and job["result"] == "done", job
    # A message that was never deleted stays counted (visible or in flight) until it is delivered
    # again; an empty queue after the run proves the run's message is gone, so no redelivery can come.
    eventually(lambda: queue_is_empty(stack), 60, "the task queue holds no message")
    assert run_starts(stack, job["job_id"]) == 1


def test_a_duplicate_message_does_not_run_the_job_again(stack):
    function_id = stack.client.create("prod-dup", "def handler(event, context):\n    return 1\n")["function_id"]
    job = stack.client.invoke(function_id, None, wait_s=60)
    assert job["status"] == "SUCCESS"
    Broker(stack.settings).send(RUN_TASK, [job["job_id"]])
    # Delivered and refused: the worker says so, which proves the duplicate reached it.
    eventually(lambda: stack.lines("worker", "message dropped", job["job_id"]), 60,
               "the duplicate message reaches a worker")
    assert run_starts(stack, job["job_id"]) == 1
    assert stack.client.job(job["job_id"])["finished_at"] == job["finished_at"]


def test_kill_9_of_the_pool_process_fails_the_job_as_worker_lost(stack):
    function_id = stack.client.create("prod-victim", SLEEPS, timeout_s=300)["function_id"]
    job_id = stack.client.invoke(function_id, None, wait_s=0)["job_id"]
    await_job_container(stack.client, job_id)
    jobs = Services(stack.settings).jobs
    holder = jobs.get(job_id)["worker_id"]  # "host:pid" of the pool process: it claims before it runs
    os.kill(int(holder.rsplit(":", 1)[1]), signal.SIGKILL)
    lease_until = jobs.get(job_id)["lease_until"]  # the holder's last renewal
    final = stack.client.wait(job_id, 120)
    assert final["status"] == "FAILED" and final["error"]["type"] == "worker_lost", final
    # The reaper failed it, and only once the dead holder's lease had run out.
    assert jobs.get(job_id)["finished_at"] >= lease_until
    assert stack.lines("worker", "job failed: worker lost", job_id), stack.log_tail()
    await_no_job_container(job_id, 60, "the killed run's container is removed")
    assert stack.procs["worker"].alive()
    assert stack.client.invoke(stack.client.create("prod-after", ALIVE)["function_id"], None, wait_s=60)["result"] \
        == "alive"


def test_kill_9_of_the_whole_worker_fails_the_job_and_a_restarted_worker_removes_its_container(stack):
    function_id = stack.client.create("prod-victim-2", SLEEPS, timeout_s=300)["function_id"]
    job_id = stack.client.invoke(function_id, None, wait_s=0)["job_id"]
    await_job_container(stack.client, job_id)
    stack.procs["worker"].kill()  # the main process and its pool processes at once
    # systemd restarts a dead worker in production; the new one's reaper cleans up after the old.
    stack.start_worker()
    final = stack.client.wait(job_id, 120)
    assert final["status"] == "FAILED" and final["error"]["type"] == "worker_lost", final
    await_no_job_container(job_id, 60, "the dead worker's container is removed")
    assert stack.client.invoke(stack.client.create("prod-after-2", ALIVE)["function_id"], None, wait_s=60)["result"] \
        == "alive"


def test_cancel_a_running_job(stack):
    cancel_a_running_job(stack, "worker", SLEEPS)
