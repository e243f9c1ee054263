"""`nanogrid status` against a running API and worker, the recent-failures list, and `nanogrid flower`'s guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import boto3
import pytest

from nanogrid import cli
from nanogrid.config import Settings
from nanogrid.jobs import Status
from nanogrid.jobs.index import FAILURES, FAILURES_KEPT
from nanogrid.services import Services
from nanogrid.transport.depth import queue_depth
from support.functions import FAILS, GATED, GATED_TIMEOUT_S, Gate
from support.processes import REPO
from support.stack import Stack
from support.waiting import eventually

# How long `nanogrid status` collects the workers' replies: plenty for a busy machine's worker.
REPLIES_S = "10"


def nanogrid(env: dict, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanogrid.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def stack(processes, tmp_path_factory, redis_url):
    running = Stack.on_redis(processes, tmp_path_factory.mktemp("status"), redis_url, db=5)
    yield running
    running.stop()


def test_status_shows_queue_worker_active_run_and_failure(stack, tmp_path):
    failed = stack.client.invoke(stack.client.create("breaks", FAILS)["function_id"], {}, wait_s=60)
    assert failed["status"] == "FAILED"
    sleeper = stack.client.create("naps", GATED, timeout_s=GATED_TIMEOUT_S)["function_id"]
    with Gate(tmp_path) as gate:  # the run stays active until both reports are read
        running = stack.client.invoke(sleeper, gate.event, wait_s=0)["job_id"]
        eventually(lambda: stack.client.job(running)["status"] == "PROCESSING", 60, "the gated run starts")
        shown = nanogrid(stack.env, "status", "--timeout", REPLIES_S)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        text = shown.stdout
        assert "Queue\n  0 visible, 0 in flight" in text, text
        assert f"{stack.node}  pid " in text and "concurrency 2" in text and "task events off" in text, text
        assert f"{running}  naps ({sleeper})  running " in text, text
        failure = f"{failed['job_id']}  {failed['function_id']}  runtime_error: the function exited with code 1"
        assert failure in text, text

        as_json = nanogrid(stack.env, "status", "--json", "--timeout", REPLIES_S)
        assert as_json.returncode == 0, as_json.stderr
        doc = json.loads(as_json.stdout)
        assert doc["errors"] == {}
        assert doc["queue"] == {"broker": "redis", "queue": "nanogrid", "visible": 0, "in_flight": 0}
        assert [(w["name"], w["task_events"]) for w in doc["workers"]] == [(stack.node, False)]
        assert doc["active_runs"]["count"] == 1
        [active] = doc["active_runs"]["runs"]
        assert (active["job_id"], active["function"]) == (running, "naps")
        first = doc["recent_failures"][0]
        assert (first["job_id"], first["function_id"], first["error_type"]) == (failed["job_id"], failed["function_id"],
                                                                               "runtime_error")
        assert first["finished_at"].endswith("Z")


def test_status_names_what_it_cannot_read(stack, tmp_path):
    env = {**stack.env, "NANOGRID_REDIS_URL": "redis://127.0.0.1:1/0"}  # Redis unreachable; broker fine
    shown = nanogrid(env, "status", "--timeout", REPLIES_S)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "Recent failures\n  unavailable: " in shown.stdout  # kept in Redis only
    active = shown.stdout.split("Active runs", 1)[1].split("Recent failures", 1)[0]
    assert active.startswith(" (") and "unavailable" not in active  # from the job store, whatever Redis does
    assert f"{stack.node}  pid " in shown.stdout  # the rest is still shown


def test_recent_failures_are_capped_and_newest_first(local_settings):
    svc = Services(local_settings)
    function = {"function_id": "fn-0123456789abcdef", "version": 1, "handler": "handler"}
    ids = []
    for i in range(FAILURES_KEPT + 5):
        job = svc.jobs.create(function, {"i": i})
        svc.jobs.finish(job["job_id"], None, Status.FAILED, error={"type": "cancelled", "message": "x" * 1000})
        ids.append(job["job_id"])
    svc.jobs.finish(ids[0], None, Status.FAILED, error={"type": "cancelled", "message": "again"})  # refused: already FAILED
    kept = [json.loads(raw) for raw in svc.redis.lrange(FAILURES, 0, -1)]
    assert len(kept) == FAILURES_KEPT
    assert [k["job_id"] for k in kept] == ids[::-1][:FAILURES_KEPT]
    assert set(kept[0]) == {"job_id", "function_id", "error_type", "message", "finished_at"}
    assert len(kept[0]["message"]) == 300


def test_queue_depth_on_sqs(moto_server, redis_url):
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"nanogrid-depth-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)  # one in flight
    settings = Settings.from_env({"SQS_QUEUE_URL": url, "AWS_ENDPOINT_URL": moto_server, "AWS_REGION": "us-east-1",
                                  "NANOGRID_REDIS_URL": redis_url})
    assert queue_depth(settings).document() == {"broker": "sqs", "queue": url.rsplit("/", 1)[-1], "visible": 2,
                                                "in_flight": 1}


# --- nanogrid flower -----------------------------------------------------------------------------------

def test_flower_refuses_to_start_without_authentication():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    refused = nanogrid(env, "flower", "--port=0")
    assert refused.returncode == 2
    assert "refusing to start it without authentication" in refused.stderr and "FLOWER_BASIC_AUTH" in refused.stderr


@pytest.mark.parametrize("args, environ, ok", [
    ([], {}, False),
    (["--port=5555"], {"FLOWER_BASIC_AUTH": ""}, False),
    ([], {"FLOWER_BASIC_AUTH": "ops:pw"}, True),
    ([], {"FLOWER_AUTH": ".*@example\\.com"}, True),
    (["--basic-auth=ops:pw"], {}, True),
    (["--basic_auth", "ops:pw"], {}, True),
    (["--auth", ".*@example\\.com", "--auth_provider", "flower.views.auth.GithubLoginHandler"], {}, True),
    (["--basic-auth"], {}, False),
    (["--basic-auth="], {}, False),
])
def test_flower_authentication_detection(args, environ, ok):
    assert cli.flower_authenticated(args, environ) is ok
