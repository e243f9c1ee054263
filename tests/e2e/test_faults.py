"""Faults under load on the production stack: every accepted run still ends exactly once.

Two API processes and two workers on SQS, S3 and DynamoDB (moto server), the GCS emulator, dockerd
and a redis-server of this test's own, which it kills. A burst of runs goes through both APIs; one
API is killed mid-burst (its unanswered requests may have recorded jobs nobody was told about),
and Redis is killed right after the burst and comes back empty 10 s later. Executions are counted
outside NanoGrid: every run asks the AI node (an Ollama-compatible server of the test's own) once,
with its job id as the prompt.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

from support.fake_ollama import FakeOllama
from nanogrid.client import Client, ClientError
from nanogrid.jobs.records import TERMINAL
from support.docker import installation_containers
from support.processes import Process
from support.servers import free_port, redis_answers, redis_command
from support.stack import Stack
from support.waiting import eventually

BURST = 40
REDIS_DOWN_S = 10  # the fault's length, as the acceptance gives it
LEASE_S = 10
REAPER_INTERVAL_S = 1
REDISPATCH_AFTER_S = 5
# The documented bound for a run to end once its parts answer again: an expired lease or an
# unclaimed record is seen by the next sweep after NANOGRID_REDISPATCH_AFTER_S, then it runs.
SETTLE_S = 180
COUNTED = """
import time
import nanogrid_ai

def handler(event, context):
    nanogrid_ai.generate("llama3.2", "execution " + context.job_id)
    time.sleep(0.2)
    return "done"
"""


@pytest.fixture
def ollama():
    with FakeOllama() as server:
        yield server


def own_redis(processes, workdir) -> tuple[str, Callable[[], Process]]:
    """A redis-server on a free port without persistence, and a function that (re)starts it."""
    port = free_port()

    def start():
        process = processes.start("redis", redis_command(port, workdir), {}, workdir)
        eventually(lambda: redis_answers(port), 30, "redis-server answers")
        return process
    return f"redis://127.0.0.1:{port}/0", start


def accepted_runs(clients: list[Client], function_id: str) -> tuple[list[str], int]:
    """BURST asynchronous runs sent through the clients in turn; the ids of those accepted, and how
    many requests got no answer (their API was killed under them)."""
    def send(index: int):
        try:
            return clients[index % len(clients)].invoke(function_id, wait_s=0)["job_id"]
        except ClientError:
            return None  # refused, or no answer: the API was killed under it

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(BURST)))
    return [job for job in results if job], results.count(None)


def test_redis_killed_after_a_burst_and_an_api_killed_mid_burst(processes, tmp_path, moto_server, gcs_emulator,
                                                              runtime_image, ollama):
    redis_url, start_redis = own_redis(processes, tmp_path)
    redis_process = start_redis()
    # The installation's temporary files, to find what it leaves; a short path, as the AI channel's
    # Unix socket lives there (sun_path holds 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ng-faults-"))
    stack = Stack.production(processes, tmp_path, moto_server=moto_server, gcs_emulator=gcs_emulator,
                             redis_url=redis_url, runtime_image=runtime_image, env={
                                 "AI_ENDPOINT": ollama.url,
                                 "TMPDIR": str(temp),
                                 "NANOGRID_LEASE_S": str(LEASE_S),
                                 "NANOGRID_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
                                 "NANOGRID_REDISPATCH_AFTER_S": str(REDISPATCH_AFTER_S),
                             })
    second_api = stack.start_api("api2")
    stack.start_worker(name="worker2")
    api, api2 = stack.client, Client(stack.url_of("api2"), timeout_s=60)
    function_id = api.create("counted", COUNTED)["function_id"]

    with concurrent.futures.ThreadPoolExecutor(1) as killer:
        # The second API dies once it has taken a share of the burst, with requests in flight.
        def kill_mid_burst():
            eventually(lambda: len(stack.lines("api2", "POST", "/run")) >= BURST // 8, 120, "api2 took requests")
            second_api.kill()
        killing = killer.submit(kill_mid_burst)
        accepted, unanswered = accepted_runs([api, api2], function_id)
        killing.result()
    assert len(accepted) >= BURST // 2, (len(accepted), unanswered)

    redis_process.kill()
    time.sleep(REDIS_DOWN_S)  # the outage itself: what the test injects, not a wait for something
    start_redis()
    stack.start_api("api2")  # as systemd restarts a killed service

    def every_job_ended():
        jobs = api.jobs(function_id=function_id, limit=200)["jobs"]
        return jobs if jobs and all(job["status"] in TERMINAL for job in jobs) else False
    jobs = eventually(every_job_ended, SETTLE_S, "every recorded job of the burst is terminal")
    ids = {job["job_id"] for job in jobs}
    assert set(accepted) <= ids

    executions = [request["body"]["prompt"].removeprefix("execution ") for request in ollama.requests
                  if request["path"] == "/api/generate"]
    started = [line for name in ("worker", "worker2") for line in stack.lines(name, "run started")]
    ran = [job for job in jobs if job.get("started_at")]
    assert len(executions) == len(set(executions)), "a run executed twice"
    assert set(executions) <= ids
    assert len(executions) == len(started) == len(ran), (len(executions), len(started), len(ran))
    assert all(job["status"] == "SUCCESS" for job in ran), [job for job in ran if job["status"] != "SUCCESS"]

    stack.stop()
    assert installation_containers(stack.settings) == []
    assert sorted(path.name for path in temp.iterdir()) == []
    temp.rmdir()
