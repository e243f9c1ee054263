"""A run the sandbox engine refuses before it starts: back to the queue once; refused again (its
message came straight back to the same worker before the watchdog stopped it taking runs), it
waits with that worker until its heartbeat finds the engine answering; only past that bound does
it fail. Reproduces the race deterministically: the second refusal is made to happen."""

from __future__ import annotations

import os
import socket

import pytest

from nanogrid.sandbox import EngineUnavailable
from nanogrid.task_names import RUN_TASK
from nanogrid.worker import execute
from support.app import RecordingBroker

HANDLER = "def handler(event, context):\n    return 1\n"


class Refusing:
    """A sandbox whose engine does not answer."""

    kind, isolated = "refusing", False

    def run(self, spec):
        raise EngineUnavailable("cannot create the sandbox container: the Docker engine does not answer")


@pytest.fixture
def app(make_app):
    app = make_app(broker=RecordingBroker())
    app.real_sandbox = app.services.sandbox
    app.services.__dict__["sandbox"] = Refusing()
    return app


def test_a_refused_run_is_requeued_then_parked_with_its_worker_then_dispatched_when_the_engine_answers(app):
    fn = app.deploy("refused", HANDLER)
    job_id = app.client.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0}).get_json()["job_id"]
    jobs = app.services.jobs
    assert execute.run(app.services, job_id) == "requeued"
    assert app.broker.job_ids(RUN_TASK).count(job_id) == 2  # published again at once
    # The same worker takes it again before its watchdog noticed: it is parked, not failed.
    assert execute.run(app.services, job_id) == "parked"
    assert jobs.get(job_id)["status"] == "PENDING" and app.broker.job_ids(RUN_TASK).count(job_id) == 2
    # This test process stands for the pool process; its parent for the worker's main process.
    assert jobs.release_parked(f"{socket.gethostname()}:{os.getppid()}") == 1
    assert app.broker.job_ids(RUN_TASK).count(job_id) == 3
    app.services.__dict__["sandbox"] = app.real_sandbox  # the engine answers again
    assert execute.run(app.services, job_id) == "SUCCESS"


def test_a_run_refused_past_the_bound_fails(app):
    fn = app.deploy("refused", HANDLER)
    job_id = app.client.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0}).get_json()["job_id"]
    outcomes = [execute.run(app.services, job_id) for _ in range(1 + execute.ENGINE_RETRIES + execute.ENGINE_PARKINGS)]
    assert outcomes == ["requeued"] + ["parked"] * execute.ENGINE_PARKINGS + ["FAILED"]
    job = app.services.jobs.get(job_id)
    assert job["status"] == "FAILED" and job["error"]["type"] == "sandbox_error"
