"""Events in and out through real processes, on the dev stack and on the production stack (two
API processes): idempotent run requests sent to either API, a schedule fired by two schedulers
(one killed mid-way; on `nanogrid dev` its own and one more), a retried run and its signed
callback, messages no worker can process that go to the dead letters (SQS's queue, the dev
stack's Redis list) while runs flow and come back with a redrive, and the live events of a run
(Server-Sent Events) watched from either API process."""

from __future__ import annotations

import concurrent.futures
import json
import time
from datetime import datetime

import boto3
import kombu
import pytest
import requests

from nanogrid.client import TERMINAL, parse_events
from nanogrid.config import Settings
from nanogrid.jobs.callbacks import verify
from support.fake_ollama import FakeOllama
from support.metrics import scrape, scrape_until, total, value
from support.receiver import Receiver
from support.stack import PRODUCTION_REGION, Stack
from support.waiting import eventually

OK = "def handler(event, context):\n    return event.get('n', 0) * 2\n"
INTERVAL_S = 2
SCHEDULED_FOR_S = 20  # how long the two schedulers fire the schedule, as the acceptance gives it
# Both stacks, reached at run time (request.getfixturevalue): their parameters say what they need.
STACKS = [
    pytest.param("dev", marks=pytest.mark.processes),
    pytest.param("production", marks=[pytest.mark.aws, pytest.mark.docker, pytest.mark.gcs, pytest.mark.processes,
                                      pytest.mark.redis]),
]


@pytest.fixture(scope="module")
def ollama():
    with FakeOllama() as server:
        yield server


# The test's receiver listens on loopback, which callbacks may not reach unless an operator allows it.
CALLBACKS_TO_LOOPBACK = {"NANOGRID_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8", "NANOGRID_CALLBACK_BACKOFF_S": "0.5"}


@pytest.fixture(scope="module")
def production(processes, tmp_path_factory, moto_server, gcs_emulator, redis_url, runtime_image, ollama):
    stack = Stack.production(processes, tmp_path_factory.mktemp("events"), moto_server=moto_server,
                             gcs_emulator=gcs_emulator, redis_url=redis_url, runtime_image=runtime_image,
                             env={**CALLBACKS_TO_LOOPBACK, "AI_ENDPOINT": ollama.url})
    stack.start_api("api2")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("events-dev"), env=CALLBACKS_TO_LOOPBACK)
    yield stack
    stack.stop()


def run(url: str, function_id: str, key: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/functions/{function_id}/run", json=body, headers={"Idempotency-Key": key},
                         timeout=120)


@pytest.mark.parametrize("shape", STACKS)
def test_the_same_idempotency_key_twice_gives_one_job_and_another_body_is_422(request, shape):
    stack = request.getfixturevalue(shape)
    urls = [stack.url, stack.url_of("api2")] if shape == "production" else [stack.url, stack.url]
    function_id = stack.client.create(f"idempotent-{shape}", OK)["function_id"]
    first = run(urls[0], function_id, "order-42", {"input": {"n": 21}, "wait_s": 60})
    again = run(urls[1], function_id, "order-42", {"input": {"n": 21}, "wait_s": 60})
    assert first.status_code == 200 and first.json()["result"] == 42, first.text
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true", again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    other = run(urls[1], function_id, "order-42", {"input": {"n": 1}, "wait_s": 60})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_conflict", other.text
    assert [job["job_id"] for job in stack.client.jobs(function_id=function_id)["jobs"]] == [first.json()["job_id"]]


@pytest.mark.parametrize("shape", STACKS)
def test_two_schedulers_fire_every_tick_once_and_one_killed_loses_at_most_the_tick_in_flight(request, shape):
    stack = request.getfixturevalue(shape)
    client = stack.client
    function_id = client.create("ticking", OK)["function_id"]
    killed = stack.start_scheduler("scheduler-killed")
    # `nanogrid dev` runs a scheduler of its own, the one that stays; the production stack none.
    survivor = stack.procs["dev"] if shape == "dev" else stack.start_scheduler("scheduler")
    made = requests.post(f"{stack.url}/functions/{function_id}/schedules",
                         json={"interval_s": INTERVAL_S, "input": {"n": 1}}, timeout=30)
    assert made.status_code == 201, made.text
    schedule = made.json()
    created = time.monotonic()
    time.sleep(SCHEDULED_FOR_S / 2)  # the schedule runs for the time the acceptance gives it
    killed.kill()
    time.sleep(max(0.0, SCHEDULED_FOR_S - (time.monotonic() - created)))
    gone = requests.delete(f"{stack.url}/functions/{function_id}/schedules/{schedule['schedule_id']}", timeout=30)
    assert gone.status_code == 204, gone.text
    deleted = time.monotonic()

    def fired() -> list[dict]:
        jobs = client.jobs(function_id=function_id, limit=200)["jobs"]
        return jobs if all(job["status"] in TERMINAL for job in jobs) else []
    # Twice a second: the dev stack's rate limit (per client address) is shared by this module's tests.
    jobs = eventually(fired, 120, "every fired run has ended", interval_s=0.5)
    ticks = sorted(job["trigger"]["tick"] for job in jobs)
    assert all(job["trigger"]["schedule_id"] == schedule["schedule_id"] for job in jobs)
    assert all(job["status"] == "SUCCESS" and job["result"] == 2 for job in jobs)
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
    seconds = [tick_seconds(tick) for tick in ticks]
    gaps = [later - earlier for earlier, later in zip(seconds, seconds[1:])]
    assert all(gap % INTERVAL_S == 0 for gap in gaps), gaps
    missed = sum(gap // INTERVAL_S - 1 for gap in gaps)
    assert missed <= 1, f"more than the tick in flight was lost: {ticks}"
    expected = SCHEDULED_FOR_S // INTERVAL_S
    assert expected - 2 <= len(ticks) <= expected + 1, ticks

    # Deleted, it fires no more: two intervals later there is nothing new.
    time.sleep(max(0.0, 2 * INTERVAL_S - (time.monotonic() - deleted)))
    assert len(client.jobs(function_id=function_id, limit=200)["jobs"]) == len(jobs)
    assert survivor.alive()


def tick_seconds(tick: str) -> int:
    return int(datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp())


POISON = "this is no Celery message"


def dlq(stack: Stack, *argv: str) -> str:
    """`nanogrid dlq ...` in an operator's shell of the stack: its output."""
    done = stack.cli("dlq", *argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dead_letters(stack: Stack, count: int) -> list[dict]:
    """`nanogrid dlq list --json`, once it shows count letters."""
    def listed() -> list[dict] | None:
        letters = json.loads(dlq(stack, "list", "--json"))
        return letters if len(letters) == count else None
    return eventually(listed, 120, f"{count} letters in the dead letters")


def runs_flow(stack: Stack) -> None:
    function_id = stack.client.create("flowing", OK)["function_id"]
    jobs = [stack.client.invoke(function_id, {"n": n}, wait_s=0)["job_id"] for n in range(5)]
    done = [stack.client.wait(job_id, 120) for job_id in jobs]
    assert [(job["status"], job["result"]) for job in done] == [("SUCCESS", n * 2) for n in range(5)]


def test_a_poison_message_on_sqs_goes_to_the_dead_letter_queue_while_runs_flow(production):
    settings = production.settings
    sqs = boto3.client("sqs", endpoint_url=settings.aws_endpoint_url, region_name=PRODUCTION_REGION)
    sqs.send_message(QueueUrl=settings.sqs_queue_url, MessageBody=POISON)
    runs_flow(production)
    [letter] = dead_letters(production, 1)
    # Not a Celery envelope at all: kombu's SQS transport hands it on as a message without headers.
    assert (letter["reason"], letter["body"]) == ("unknown_message", POISON), letter
    depth = sqs.get_queue_attributes(QueueUrl=settings.sqs_queue_url,
                                     AttributeNames=["ApproximateNumberOfMessages",
                                                     "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert depth == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}, depth
    assert production.procs["worker"].alive()

    # Right after a listing: what it showed is there for the redrive, which sends the body as it
    # came in; no worker can process it still, so it comes back.
    assert dlq(production, "redrive").startswith("sent 1 dead letters of ")
    scrape_until(production.metrics_url, lambda samples: total(samples, "nanogrid_dead_letters_total",
                                                               reason="unknown_message") == 2, "the redriven letter came back")
    assert [(again["reason"], again["body"]) for again in dead_letters(production, 1)] == [("unknown_message", POISON)]


def test_messages_no_worker_can_process_go_to_the_dead_letters_on_redis_and_a_redrive_sends_them_back(dev):
    settings = Settings.from_env(dev.operator_env)
    with kombu.Connection(settings.broker_url) as connection:
        producer = connection.Producer()
        producer.publish(POISON, exchange="", routing_key=settings.queue_name, content_type="application/json",
                         content_encoding="utf-8")
        producer.publish([[], {}, {}], exchange="", routing_key=settings.queue_name, serializer="json",
                         headers={"task": "nanogrid.no_such_task", "id": "no-such-task-1", "lang": "py"})
    runs_flow(dev)
    letters = dead_letters(dev, 2)
    assert [(letter["reason"], letter["task"], letter["body"]) for letter in letters] == [
        ("undecodable", None, POISON), ("unknown_task", "nanogrid.no_such_task", "[[], {}, {}]")], letters
    samples = scrape(dev.metrics_url)
    assert [value(samples, "nanogrid_dead_letters_total", reason=reason) for reason in ("undecodable", "unknown_task")
            ] == [1, 1]
    assert "dead letters of" in dlq(dev, "list") and POISON in dlq(dev, "list")

    assert dlq(dev, "redrive").startswith("sent 2 dead letters of ")
    scrape_until(dev.metrics_url, lambda samples: total(samples, "nanogrid_dead_letters_total") == 4,
                 "both redriven letters came back")
    assert [(letter["reason"], letter["task"], letter["body"]) for letter in dead_letters(dev, 2)] == [
        ("undecodable", None, POISON), ("unknown_task", "nanogrid.no_such_task", "[[], {}, {}]")]


# --- Live events of a run (Server-Sent Events) -------------------------------------------------

PRINTS = """
import time
def handler(event, context):
    for i in range(10):
        print(f"line {i}", flush=True)
        time.sleep(0.3)
    return "done"
"""
PRINTS_PAST_ITS_DEADLINE = """
import time
def handler(event, context):
    i = 0
    while True:
        print(f"line {i}", flush=True)
        i += 1
        time.sleep(0.3)
"""
LINES = "".join(f"line {i}\n" for i in range(10))


def events(url: str, job_id: str, last_event_id: str | None = None, stop_after: int | None = None,
           on_event=None) -> list[tuple[str, str, dict]]:
    """(id, event, data) of a job's event stream, read until "end" (or stop_after events)."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    found: list[tuple[str, str, dict]] = []
    with requests.get(f"{url}/jobs/{job_id}/events", headers=headers, stream=True, timeout=(10, 120)) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        for event in parse_events(response.iter_lines(chunk_size=None, decode_unicode=True)):
            found.append(event)
            if on_event:
                on_event(event)
            if event[1] == "end" or len(found) == stop_after:
                break
    return found


def stdout_of(stream: list[tuple[str, str, dict]]) -> str:
    return "".join(data["text"] for _, kind, data in stream if kind == "stdout")


@pytest.mark.parametrize("shape", STACKS)
def test_a_run_is_watched_live_from_the_other_api_and_a_reconnect_or_a_late_client_misses_nothing(request, shape):
    stack = request.getfixturevalue(shape)
    watcher = stack.url_of("api2") if shape == "production" else stack.url
    function_id = stack.client.create(f"prints-{shape}", PRINTS)["function_id"]
    job_id = stack.client.invoke(function_id, wait_s=0)["job_id"]
    status_at_half: list[str] = []

    def halfway(event):
        if event[1] == "stdout" and "line 5" in event[2]["text"] and not status_at_half:
            status_at_half.append(stack.client.job(job_id)["status"])
    live = events(watcher, job_id, on_event=halfway)

    ids = [tuple(int(part) for part in event_id.split("-")) for event_id, _, _ in live]  # Redis stream ids
    assert ids == sorted(set(ids)), ids
    assert stdout_of(live) == LINES
    assert live[-1][1] == "end" and live[-1][2]["status"] == "SUCCESS" and live[-1][2]["result"] == "done"
    assert [data["status"] for _, kind, data in live if kind == "status"][-1] == "SUCCESS"
    # Streamed, not delivered at the end: half of the lines were there while the run still ran.
    assert status_at_half == ["PROCESSING"], status_at_half

    head = events(stack.url, job_id, stop_after=3)
    rest = events(stack.url, job_id, last_event_id=head[-1][0])
    assert head + rest == live
    assert events(watcher, job_id) == live  # a client that comes after the end gets the whole backlog


YIELDS = """
import time
def handler(event, context):
    for i in range(5):
        yield {"item": i}
        time.sleep(0.2)
"""
PASSES_TOKENS_ON = """
import nanogrid_ai
def handler(event, context):
    for piece in nanogrid_ai.generate_stream("llama3.2", event["prompt"]):
        if piece["response"]:
            yield piece["response"]
"""


def test_twenty_watchers_of_one_run_get_the_same_events_and_yielded_items_arrive_as_results(production):
    function_id = production.client.create("yields", YIELDS)["function_id"]
    job_id = production.client.invoke(function_id, wait_s=0)["job_id"]
    urls = [production.url, production.url_of("api2")]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda n: events(urls[n % 2], job_id), range(20)))
    assert all(stream == streams[0] for stream in streams)
    assert [data for _, kind, data in streams[0] if kind == "result"] == [{"item": {"item": i}} for i in range(5)]
    assert streams[0][-1][2]["result"] == [{"item": i} for i in range(5)]


def test_tokens_from_the_ai_node_reach_the_client_as_they_arrive(production, ollama):
    """In lockstep the AI node sends its next token only once the test has the one before as a
    result event: any buffering on the way (channel, sandbox, worker, Redis, API) leaves the node
    waiting and the run unfinished."""
    ollama.reset()
    ollama.lockstep = True
    function_id = production.client.create("passes-tokens", PASSES_TOKENS_ON)["function_id"]
    job_id = production.client.invoke(function_id, {"prompt": "tokens as they come"}, wait_s=0)["job_id"]
    tokens: list[str] = []

    def arrived(event):
        if event[1] == "result":
            tokens.append(event[2]["item"])
            ollama.ack()
    try:
        stream = events(production.url_of("api2"), job_id, on_event=arrived)
    finally:
        ollama.reset()
    assert stream[-1][2]["status"] == "SUCCESS", stream[-1][2]
    assert tokens == ["echo:", " tokens", " as", " they", " come"]


def test_a_run_killed_at_its_deadline_keeps_what_it_printed(production):
    function_id = production.client.create("past-deadline", PRINTS_PAST_ITS_DEADLINE, timeout_s=2)["function_id"]
    job_id = production.client.invoke(function_id, wait_s=0)["job_id"]
    stream = events(production.url_of("api2"), job_id)
    job = stream[-1][2]
    assert job["status"] == "FAILED" and job["error"]["type"] == "timeout", job
    assert job["stdout"].startswith("line 0\nline 1\nline 2\n"), job["stdout"]
    assert stdout_of(stream) == job["stdout"]


# --- Callbacks and retries through the workers -------------------------------------------------

FAILS_TWICE = """
def handler(event, context):
    if context.attempt < 3:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt}
"""


@pytest.mark.parametrize("shape", STACKS)
def test_a_retried_run_ends_on_its_third_attempt_and_a_callback_gets_there_on_its_third(request, shape):
    stack = request.getfixturevalue(shape)
    client = stack.client
    hook = Receiver([500, 503, 200])
    try:
        function_id = client.create("fails-twice", FAILS_TWICE, retries={"max": 2, "backoff_s": 0.2},
                                    callback_url=hook.url)["function_id"]
        job = client.wait(client.invoke(function_id, wait_s=0)["job_id"], 120)
        assert job["status"] == "SUCCESS" and job["result"] == {"attempt": 3} and job["attempt"] == 3, job
        assert [attempt["error"]["type"] for attempt in job["attempts"]] == ["runtime_error", "runtime_error"]

        def delivered() -> dict | None:
            latest = client.job(job["job_id"])
            return latest if latest["callbacks"][0]["status"] != "pending" else None
        callback = eventually(delivered, 120, "the callback was taken")["callbacks"][0]
        assert (callback["status"], callback["attempts"], callback["last_status_code"]) == ("delivered", 3, 200)
        assert len(hook.received) == 3
        body = hook.received[-1]["body"]
        assert json.loads(body)["job_id"] == job["job_id"] and json.loads(body)["status"] == "SUCCESS"
        secret = requests.get(f"{stack.url}/callbacks/signing-secret", timeout=30).json()["secret"]
        assert verify(secret, body, hook.received[-1]["headers"]["X-NanoGrid-Signature"])
    finally:
        hook.close()

    once = client.create("fails-always-once", FAILS_TWICE, retries={"max": 1, "backoff_s": 0.2})["function_id"]
    failed = client.wait(client.invoke(once, wait_s=0)["job_id"], 120)
    assert failed["status"] == "FAILED" and failed["attempt"] == 2, failed
    assert [attempt["attempt"] for attempt in failed["attempts"]] == [1, 2]
