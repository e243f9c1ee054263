"""Remote control, events and Flower on the SQS broker, with real processes on a real moto server.

Two `celery -A nanogrid worker` processes consume a task queue on moto (Redis is the result
backend and job state); `celery inspect|control|call` and Flower run as the operator would run
them, in their own processes. Broadcast goes through SNS (nanogrid.transport.sqs), so the tests
also check that the per-worker and per-caller queues and SNS subscriptions go away: on a clean
exit, after `control shutdown`, and through the sweeper when a worker is killed. The last test
runs `inspect ping` on the Redis broker, to show the two brokers answer alike.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import redis
import requests

from nanogrid import bundles
from nanogrid.config import Settings
from nanogrid.jobs import Status
from nanogrid.services import Services
from nanogrid.transport import DYNAMIC_PREFIX
from nanogrid.transport.sqs import TAG_DYNAMIC, TAG_HEARTBEAT, TAG_TTL, registry, sweep
from nanogrid.transport.app import make_celery
from support.functions import GATED, GATED_TIMEOUT_S, Gate
from support.processes import REPO, Process, Processes
from support.servers import free_port, wait_for_http
from support.stack import clean_environ
from support.waiting import eventually

REGION = "us-east-1"
NODES = ("w1@ops", "w2@ops")
PIDBOX_TOPIC = f"{DYNAMIC_PREFIX}celery-pidbox"
EVENTS_TOPIC = f"{DYNAMIC_PREFIX}celeryev"
# How long a caller waits for replies it expects from named workers (it returns once they all replied).
REPLIES_S = 60


# --- Processes ------------------------------------------------------------------------------------

def celery(env: dict, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "nanogrid", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def remote(env: dict, kind: str, command: str, *args: str, nodes: tuple[str, ...]) -> dict:
    """`celery inspect|control COMMAND --json` sent to nodes (`-d`), as {node: reply}; it returns
    as soon as they all replied (a broadcast without a destination would wait out its timeout)."""
    result = celery(env, kind, command, *args, "-d", ",".join(nodes), "--timeout", str(REPLIES_S), "--json")
    assert result.returncode == 0, f"celery {kind} {command} failed:\n{result.stdout}\n{result.stderr}"
    replies = json.loads(result.stdout.strip().splitlines()[-1])
    if isinstance(replies, list):  # control: [{node: reply}, ...]
        replies = {node: reply for item in replies for node, reply in item.items()}
    return replies


def start_worker(processes: Processes, env: dict, node: str, log_dir: Path, concurrency: int = 2) -> Process:
    return processes.start(node.split("@")[0], [sys.executable, "-m", "celery", "-A", "nanogrid", "worker", "-n",
                                                node, "-c", str(concurrency), "-l", "info"], env, log_dir)


def start_flower(processes: Processes, name: str, env: dict, log_dir: Path) -> tuple[Process, str]:
    """Flower on a free port, its API open to the test; (the process, its URL) once it answers."""
    port = free_port()
    flower = processes.start(name, [sys.executable, "-m", "celery", "-A", "nanogrid", "flower", f"--port={port}",
                                    "--address=127.0.0.1"], {**env, "FLOWER_UNAUTHENTICATED_API": "true"}, log_dir)
    url = f"http://127.0.0.1:{port}"
    assert wait_for_http(f"{url}/healthcheck", 60, alive=flower.alive), flower.tail()
    return flower, url


def task_events(env: dict, nodes: tuple[str, ...]) -> dict:
    """Each worker's own report of whether it sends task events now (NanoGrid's inspect command)."""
    return {node: reply["task_events"] for node, reply in remote(env, "inspect", "task_events", nodes=nodes).items()}


def await_flower_hears_tasks(env: dict, nodes: tuple[str, ...], url: str) -> None:
    """Return once a task sent now is reported to Flower from its start.

    Two facts prove it: every worker reports task events on (Flower turns them on with a broadcast
    every 5 s; heartbeats are sent either way, so a worker shown online proves nothing), and Flower
    has received a probe task's events, so its event receiver is subscribed. Probes are sent until
    one arrives, since the events of one sent before the receiver subscribed may never reach it.
    """
    eventually(lambda: task_events(env, nodes) == dict.fromkeys(nodes, True), 120,
               "the workers report task events on (Flower's enable_events reached them)", interval_s=1)
    probes: list[str] = []

    def heard() -> bool:
        tasks = requests.get(f"{url}/api/tasks", timeout=30).json()
        if any(probe in tasks for probe in probes):
            return True
        sent = celery(env, "call", "nanogrid.run_job", "--args", json.dumps(["flower-probe"]))
        assert sent.returncode == 0, sent.stderr
        probes.append(sent.stdout.strip().splitlines()[-1])
        return False

    eventually(heard, 120, "Flower receives a probe task's events", interval_s=1)


def gated_job(env: dict, gate: Gate) -> tuple[Services, dict]:
    """A job of a function that runs until the gate opens (the workers use the process sandbox)."""
    services = Services(Settings.from_env(env))
    function = services.functions.create(f"gated-{uuid.uuid4().hex[:6]}", bundles.from_source(GATED, "handler"),
                                         {"timeout_s": GATED_TIMEOUT_S})
    return services, services.jobs.create(function, gate.event)


def call_run_job(env: dict, job_id: str) -> str:
    """`celery call nanogrid.run_job`: the task id."""
    sent = celery(env, "call", "nanogrid.run_job", "--args", json.dumps([job_id]))
    assert sent.returncode == 0, sent.stderr
    return sent.stdout.strip().splitlines()[-1]


# --- AWS state, seen from outside -----------------------------------------------------------------

class Aws:
    def __init__(self, endpoint: str):
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
        self.sns = boto3.client("sns", endpoint_url=endpoint, region_name=REGION)

    def dynamic_queues(self) -> list[str]:
        urls = self.sqs.list_queues(QueueNamePrefix=DYNAMIC_PREFIX).get("QueueUrls", [])
        return sorted(url.rsplit("/", 1)[-1] for url in urls)

    def topic_arn(self, name: str) -> str | None:
        arns = [t["TopicArn"] for t in self.sns.list_topics()["Topics"]]
        return next((arn for arn in arns if arn.rsplit(":", 1)[-1] == name), None)

    def subscribed_queues(self, topic: str) -> list[str]:
        arn = self.topic_arn(topic)
        if arn is None:
            return []
        subscriptions = self.sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        return sorted(s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions)


def pidbox_queue(node: str) -> str:
    return DYNAMIC_PREFIX + node.replace("@", "_") + "-celery-pidbox"


# --- Fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aws(moto_server) -> Aws:
    return Aws(moto_server)


@pytest.fixture(scope="module")
def sqs_env(moto_server, redis_url, aws, tmp_path_factory) -> dict:
    queue_url = aws.sqs.create_queue(QueueName=f"nanogrid-ops-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    redis.Redis.from_url(redis_url).flushdb()
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    env = clean_environ()
    env.update({
        "SQS_QUEUE_URL": queue_url, "AWS_ENDPOINT_URL": moto_server,
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "REDIS_HOST": host, "REDIS_PORT": port,
        "NANOGRID_SANDBOX": "process", "NANOGRID_DATA_DIR": str(tmp_path_factory.mktemp("ops-data")),
    })
    return env


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ops-logs")


@pytest.fixture(scope="module")
def baseline(aws) -> dict:
    """Dynamic queues and subscriptions that exist before this module starts anything (the moto
    server is shared by the session: another module may have left a killed worker's queue)."""
    return {"queues": set(aws.dynamic_queues()), PIDBOX_TOPIC: set(aws.subscribed_queues(PIDBOX_TOPIC)),
            EVENTS_TOPIC: set(aws.subscribed_queues(EVENTS_TOPIC))}


@pytest.fixture(scope="module")
def abandoned_queue(baseline, aws) -> str:
    """A pidbox queue as a worker that died an hour ago left it: subscribed, heartbeat stale.

    Made before any worker starts, so that the workers' first sweep (10-20 s after they start)
    finds it; the topic is the one the workers use (creating a topic returns an existing one)."""
    name = DYNAMIC_PREFIX + "dead_ops-celery-pidbox"
    stale = str(int(time.time()) - 3600)
    tags = {TAG_DYNAMIC: "1", TAG_HEARTBEAT: stale, TAG_TTL: "600"}
    url = aws.sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic_arn = aws.sns.create_topic(Name=PIDBOX_TOPIC)["TopicArn"]
    aws.sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
                      Attributes={"RawMessageDelivery": "true"})
    return name


@pytest.fixture(scope="module")
def workers(processes, abandoned_queue, sqs_env, log_dir):
    started = [start_worker(processes, sqs_env, node, log_dir) for node in NODES]
    try:
        for process, node in zip(started, NODES):
            process.wait_for(f"{node} ready.")
        yield started
    finally:
        for process in started:
            process.stop()


# --- Remote control -------------------------------------------------------------------------------

def test_inspect_ping_lists_both_workers(workers, sqs_env):
    assert remote(sqs_env, "inspect", "ping", nodes=NODES) == {node: {"ok": "pong"} for node in NODES}


def test_inspect_stats_registered_and_reserved(workers, sqs_env):
    stats = remote(sqs_env, "inspect", "stats", nodes=NODES)
    assert set(stats) == set(NODES)
    assert all(stats[node]["pool"]["max-concurrency"] == 2 for node in NODES)
    registered = remote(sqs_env, "inspect", "registered", nodes=NODES)
    assert all("nanogrid.run_job" in registered[node] for node in NODES)
    assert remote(sqs_env, "inspect", "reserved", nodes=NODES) == {node: [] for node in NODES}
    # Off until something turns them on (Flower, below): NANOGRID_TASK_EVENTS is not set.
    assert task_events(sqs_env, NODES) == dict.fromkeys(NODES, False)


def test_inspect_active_shows_a_running_task(workers, sqs_env, tmp_path):
    with Gate(tmp_path) as gate:  # the task stays active until inspect has shown it
        services, job = gated_job(sqs_env, gate)
        task_id = call_run_job(sqs_env, job["job_id"])

        def running():
            active = remote(sqs_env, "inspect", "active", nodes=NODES)
            assert set(active) == set(NODES)
            return [(node, task) for node, tasks in active.items() for task in tasks if task["id"] == task_id]

        [(node, task)] = eventually(running, 60, "the task shows in inspect active", interval_s=0)
        assert task["name"] == "nanogrid.run_job" and task["args"] == [job["job_id"]]
    eventually(lambda: services.jobs.get(job["job_id"])["status"] == Status.SUCCESS, 60, "the job succeeds")


def test_control_pool_grow_and_shrink(workers, sqs_env):
    grown = remote(sqs_env, "control", "pool_grow", "1", nodes=NODES)
    assert grown == {node: {"ok": "pool will grow"} for node in NODES}
    shrunk = remote(sqs_env, "control", "pool_shrink", "1", nodes=NODES)
    assert shrunk == {node: {"ok": "pool will shrink"} for node in NODES}


def test_callers_leave_no_reply_queue(workers, aws, baseline):
    """Every `celery inspect|control` above made a reply queue; each deleted it when it exited."""
    assert [q for q in set(aws.dynamic_queues()) - baseline["queues"] if q.endswith("-reply-celery-pidbox")] == []


# --- Flower ---------------------------------------------------------------------------------------

def test_flower_shows_workers_and_finished_tasks(processes, workers, sqs_env, aws, log_dir, baseline):
    flower, url = start_flower(processes, "flower", sqs_env, log_dir)
    try:
        # Events reach Flower once its event queue is subscribed to the events topic.
        eventually(lambda: any(q.startswith(f"{DYNAMIC_PREFIX}celeryev-") for q in aws.subscribed_queues(EVENTS_TOPIC)),
                   60, "Flower's event queue is subscribed")
        # Task events are off by default; Flower turns them on in the workers it watches (a
        # broadcast every 5 s); see await_flower_hears_tasks.
        await_flower_hears_tasks(sqs_env, NODES, url)
        task_id = call_run_job(sqs_env, "no-such-job")

        def workers_listed():
            listed = requests.get(f"{url}/api/workers", params={"refresh": 1}, timeout=60).json()
            return set(NODES) <= set(listed) and listed

        listed = eventually(workers_listed, 60, "Flower lists both workers")
        assert all("nanogrid.run_job" in listed[node]["registered"] for node in NODES)

        def task_finished():
            tasks = requests.get(f"{url}/api/tasks", timeout=30).json()
            return task_id in tasks and tasks[task_id]["state"] == "SUCCESS" and tasks[task_id]

        task = eventually(task_finished, 60, "Flower shows the finished task (events reach it)")
        assert task["name"] == "nanogrid.run_job" and task["worker"] in NODES and task["result"] == "'unknown'"

        def both_online():
            online = requests.get(f"{url}/api/workers", params={"status": 1}, timeout=30).json()
            return all(online.get(node) for node in NODES)

        eventually(both_online, 60, "Flower shows both workers online (their heartbeats arrive as events)")
    finally:
        assert flower.stop() in (0, -signal.SIGTERM), flower.tail()

    # Its event queue, its reply queues and the event queue's subscription went with it.
    new = set(aws.dynamic_queues()) - baseline["queues"]
    assert [q for q in new if "celeryev" in q or q.endswith("-reply-celery-pidbox")] == []
    assert set(aws.subscribed_queues(EVENTS_TOPIC)) <= baseline[EVENTS_TOPIC]


# --- Cleanup --------------------------------------------------------------------------------------

def test_the_workers_sweep_what_a_dead_worker_left(workers, aws, abandoned_queue):
    eventually(lambda: abandoned_queue not in aws.dynamic_queues(), 60, "a worker deletes the abandoned queue")
    eventually(lambda: abandoned_queue not in aws.subscribed_queues(PIDBOX_TOPIC), 60,
               "a worker removes the abandoned queue's subscription")


def test_control_shutdown_stops_a_worker_and_removes_its_queue(processes, workers, sqs_env, aws, log_dir):
    node = "w3@ops"
    worker = start_worker(processes, sqs_env, node, log_dir, concurrency=1)
    try:
        worker.wait_for(f"{node} ready.")
        assert pidbox_queue(node) in aws.subscribed_queues(PIDBOX_TOPIC)
        shutdown = celery(sqs_env, "control", "shutdown", "-d", node, "--timeout", "2")
        # The worker exits before it replies (Celery raises SystemExit in the handler), so the
        # caller waits out its timeout either way; the worker's exit is what counts.
        assert "No nodes replied" in shutdown.stderr + shutdown.stdout or shutdown.returncode == 0, shutdown.stderr
        returncode = worker.wait_stopped()
    finally:
        worker.stop()
    assert returncode == 0, worker.tail()
    assert pidbox_queue(node) not in aws.dynamic_queues()
    assert pidbox_queue(node) not in aws.subscribed_queues(PIDBOX_TOPIC)


def test_a_crashed_workers_queue_is_swept_after_its_ttl(processes, workers, sqs_env, aws, log_dir):
    node = "w4@ops"
    worker = start_worker(processes, sqs_env, node, log_dir, concurrency=1)
    try:
        worker.wait_for(f"{node} ready.")
    finally:
        worker.kill()
    name = pidbox_queue(node)
    assert name in aws.dynamic_queues() and name in aws.subscribed_queues(PIDBOX_TOPIC)

    topic = aws.topic_arn(PIDBOX_TOPIC)
    live = [pidbox_queue(n) for n in NODES]

    def names(urls):
        return {url.rsplit("/", 1)[-1] for url in urls}

    # Now: its heartbeat is fresh, so it stays.
    deleted, _ = sweep(aws.sqs, aws.sns, DYNAMIC_PREFIX, [topic])
    assert name not in names(deleted) and name in aws.subscribed_queues(PIDBOX_TOPIC)
    # Eleven minutes later (its TTL is 600 s). The live processes' queues are kept, as each
    # sweeper keeps the queues its own process holds: their heartbeats are refreshed only every
    # minute, so at a pretended time they would look abandoned too.
    others = [url for url in aws.sqs.list_queues(QueueNamePrefix=DYNAMIC_PREFIX)["QueueUrls"]
              if not url.endswith("/" + name)]
    deleted, removed = sweep(aws.sqs, aws.sns, DYNAMIC_PREFIX, [topic], keep=others, now=time.time() + 660)
    assert names(deleted) == {name} and removed
    assert name not in aws.dynamic_queues() and name not in aws.subscribed_queues(PIDBOX_TOPIC)
    assert set(live) <= set(aws.dynamic_queues()) and set(live) <= set(aws.subscribed_queues(PIDBOX_TOPIC))
    assert sqs_env["SQS_QUEUE_URL"] in aws.sqs.list_queues()["QueueUrls"]  # the task queue is never swept
    assert remote(sqs_env, "inspect", "ping", nodes=NODES) == {node: {"ok": "pong"} for node in NODES}


def test_a_long_lived_caller_releases_its_reply_queue_after_the_grace_period(workers, sqs_env, aws, baseline):
    """As in Flower: the reply queue outlives the call, and goes once released for the grace period."""
    app = make_celery(Settings.from_env(sqs_env))
    try:
        replies = app.control.inspect(timeout=REPLIES_S, destination=list(NODES)).ping()
        assert replies == {node: {"ok": "pong"} for node in NODES}
        [reply_queue] = [q for q in set(aws.dynamic_queues()) - baseline["queues"]
                         if q.endswith("-reply-celery-pidbox")]
        [entry] = [e for e in registry._entries.values() if e.url.endswith("/" + reply_queue)]
        assert not entry.holders and entry.released_at is not None
        registry.grace_s = 0
        registry.tick()
        assert reply_queue not in aws.dynamic_queues()
    finally:
        app.close()


def test_stopped_workers_leave_no_queue_or_subscription(workers, aws, baseline):
    assert set(map(pidbox_queue, NODES)) <= set(aws.subscribed_queues(PIDBOX_TOPIC))
    for worker in workers:
        assert worker.stop() == 0, worker.tail()  # SIGTERM: warm shutdown
    assert set(aws.dynamic_queues()) <= baseline["queues"]
    assert set(aws.subscribed_queues(PIDBOX_TOPIC)) <= baseline[PIDBOX_TOPIC]
    assert set(aws.subscribed_queues(EVENTS_TOPIC)) <= baseline[EVENTS_TOPIC]


# --- The same on the Redis broker -----------------------------------------------------------------

def test_inspect_active_control_and_flower_on_the_redis_broker(processes, sqs_env, redis_url, log_dir, tmp_path):
    env = {k: v for k, v in sqs_env.items() if k not in ("SQS_QUEUE_URL", "AWS_ENDPOINT_URL")}
    env["NANOGRID_BROKER_URL"] = redis_url.rsplit("/", 1)[0] + "/1"
    nodes = ("r1@ops", "r2@ops")
    started = [start_worker(processes, env, node, log_dir) for node in nodes]
    flower = None
    try:
        for process, node in zip(started, nodes):
            process.wait_for(f"{node} ready.")
        assert remote(env, "inspect", "ping", nodes=nodes) == {node: {"ok": "pong"} for node in nodes}
        grown = remote(env, "control", "pool_grow", "1", nodes=nodes)
        assert grown == {node: {"ok": "pool will grow"} for node in nodes}
        flower, url = start_flower(processes, "flower-redis", env, log_dir)
        # Flower turns task events on in the workers it watches (they are off by default): wait
        # until both say they are on, so the task below is reported from its start.
        await_flower_hears_tasks(env, nodes, url)

        with Gate(tmp_path) as gate:  # the task stays active until inspect has shown it
            _, job = gated_job(env, gate)
            task_id = call_run_job(env, job["job_id"])

            def running():
                active = remote(env, "inspect", "active", nodes=nodes)
                return [task for tasks in active.values() for task in tasks if task["id"] == task_id]

            [task] = eventually(running, 60, "the task shows in inspect active on Redis", interval_s=0)
            assert task["args"] == [job["job_id"]]

        def finished():
            listed = requests.get(f"{url}/api/workers", params={"refresh": 1}, timeout=60).json()
            tasks = requests.get(f"{url}/api/tasks", timeout=30).json()
            return (set(nodes) <= set(listed) and tasks.get(task_id, {}).get("state") == "SUCCESS") and tasks[task_id]

        shown = eventually(finished, 60, "Flower on Redis lists both workers and the finished task")
        assert shown["worker"] in nodes
    finally:
        if flower is not None:
            flower.stop()
        for process in started:
            process.stop()
