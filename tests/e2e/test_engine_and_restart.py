"""`nanogrid dev` through the two interruptions an operator causes: the Docker engine going away
for a while, and a restart of `nanogrid dev` itself with runs in flight and queued.

The engine test never touches the machine's dockerd: the stack reaches it through a relay of the
test's own (support.engine_proxy), which the test cuts for the outage and restores after it.
"""

from __future__ import annotations

import time

import requests

from nanogrid.client import TERMINAL
from nanogrid.config import Settings
from support.docker import installation_containers
from support.engine_proxy import engine_proxy
from support.stack import Stack
from support.waiting import eventually

ENGINE_DOWN_S = 30  # the outage the acceptance asks for
QUEUED = 3
# Prints, then runs until the sandbox is taken from under it.
PRINTS_THEN_WAITS = """
import sys, time
def handler(event, context):
    print("partial output", flush=True)
    time.sleep(600)
"""
QUICK = "def handler(event, context):\n    return event['n'] * 2\n"


def health(stack) -> dict:
    """/health's document, 200 or 503."""
    return requests.get(stack.url + "/health", timeout=30).json()


def ended(client, job_ids: list[str]) -> list[dict] | list[str]:
    """The jobs once every one of them has ended (else an empty list of the statuses so far, to show)."""
    jobs = [client.job(job_id) for job_id in job_ids]
    return jobs if all(job["status"] in TERMINAL for job in jobs) else Waiting(job["status"] for job in jobs)


class Waiting(list):
    """What is not there yet: falsy, and shown as what it holds."""

    def __bool__(self) -> bool:
        return False


def printed(stack, job_id: str, text: str) -> bool:
    """The running job has printed text (its live output, from the job's event stream)."""
    for event, data in stack.client.job_events(job_id):
        if event == "stdout" and text in data.get("text", ""):
            return True
        if event == "end":
            return False
    return False


def test_an_engine_outage_is_a_pause_and_the_run_it_cut_keeps_its_output(processes, tmp_path, runtime_image):
    with engine_proxy(tmp_path) as engine:
        (tmp_path / "dev").mkdir()
        stack = Stack.dev(processes, tmp_path / "dev", runtime_image, env={"DOCKER_HOST": engine.docker_host})
        client = stack.client
        waits = client.create("waits", PRINTS_THEN_WAITS, timeout_s=900)["function_id"]
        quick = client.create("quick", QUICK)["function_id"]
        assert client.invoke(quick, {"n": 1}, wait_s=60)["result"] == 2
        assert engine.connections > 0, "the stack does not reach the engine through the relay"

        running = client.invoke(waits, wait_s=0)["job_id"]
        assert printed(stack, running, "partial output")
        engine.cut()
        cut_at = time.monotonic()
        queued = [client.invoke(quick, {"n": n}, wait_s=0)["job_id"] for n in range(QUEUED)]

        down = eventually(lambda: health(stack)["components"]["sandbox"]["status"] == "down" and health(stack),
                          ENGINE_DOWN_S, "/health says the sandbox is down")
        assert down["status"] != "ok"
        cut_run = eventually(lambda: (job := client.job(running))["status"] == "FAILED" and job, ENGINE_DOWN_S,
                             "the run the outage cut has ended")
        assert cut_run["error"]["type"] == "sandbox_error", cut_run["error"]
        assert "partial output" in cut_run["stdout"]
        time.sleep(max(0.0, ENGINE_DOWN_S - (time.monotonic() - cut_at)))  # the rest of the outage
        assert [client.job(job_id)["status"] for job_id in queued] == ["PENDING"] * QUEUED

        engine.restore()
        done = eventually(lambda: ended(client, queued), 120, "the queued runs have ended after the engine came back")
        assert [(job["status"], job["result"]) for job in done] == [("SUCCESS", n * 2) for n in range(QUEUED)]
        assert eventually(lambda: health(stack)["components"]["sandbox"]["status"] == "ok", 60,
                          "/health says the sandbox is back")
        assert stack.stop() == {"dev": 0}
    assert not any(job["status"] == "FAILED" and job["error"]["type"] == "cancelled" for job in [cut_run, *done])


def test_a_restart_of_nanogrid_dev_resumes_queued_runs_and_leaves_no_container_behind(processes, tmp_path,
                                                                                     runtime_image):
    data = tmp_path / "dev"
    data.mkdir()
    stack = Stack.dev(processes, data, runtime_image, env={"NANOGRID_WORKER_CONCURRENCY": "1"})
    client = stack.client
    waits = client.create("waits", PRINTS_THEN_WAITS, timeout_s=900)["function_id"]
    quick = client.create("quick", QUICK)["function_id"]
    instance = (data / "instance-id").read_text().strip()
    interrupted = client.invoke(waits, wait_s=0)["job_id"]
    assert printed(stack, interrupted, "partial output")
    queued = [client.invoke(quick, {"n": n}, wait_s=0)["job_id"] for n in range(QUEUED)]
    assert [client.job(job_id)["status"] for job_id in queued] == ["PENDING"] * QUEUED
    assert stack.stop() == {"dev": 0}

    restarted = Stack.dev(processes, data, runtime_image, env={"NANOGRID_WORKER_CONCURRENCY": "1"})
    done = eventually(lambda: ended(restarted.client, queued), 30, "the queued runs ended within 30 s of the restart")
    assert [job["status"] for job in done] == ["SUCCESS"] * QUEUED, done
    assert [job["result"] for job in done] == [n * 2 for n in range(QUEUED)]
    cut = restarted.client.job(interrupted)
    assert cut["status"] == "FAILED" and "partial output" in cut["stdout"], cut
    assert (data / "instance-id").read_text().strip() == instance
    assert restarted.stop() == {"dev": 0}
    assert installation_containers(Settings.from_env({"NANOGRID_INSTANCE_ID": instance})) == []
