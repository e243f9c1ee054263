"""Retries: a failure the function's policy covers runs the same job again, `attempt` counting from
1 (the handler's context.attempt), every failed attempt kept, terminal only after the last one."""

from __future__ import annotations

import pytest

from nanogrid.jobs import Status
from nanogrid.jobs.retries import RetryPolicyError, check, delay_before_next
from nanogrid.task_names import RUN_TASK
from nanogrid.worker import execute
from nanogrid.worker.reaper import Reaper
from support.app import App, RecordingBroker

FLAKY = """
def handler(event, context):
    if context.attempt < 3:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt}
"""


@pytest.fixture
def retrying_app(make_app) -> App:
    """The API on an app with a short lease whose run messages are recorded, not sent
    (support.app.RecordingBroker): the test runs each one as a worker would."""
    return make_app(broker=RecordingBroker(), lease_s=1)


@pytest.fixture
def services(retrying_app):
    return retrying_app.services


@pytest.fixture
def api(retrying_app):
    return retrying_app.client


def deploy(api, retries, code=FLAKY) -> str:
    response = api.post("/functions", json={"name": "flaky", "code": code, "retries": retries})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["function_id"]


def run_until_terminal(services, api, function_id) -> dict:
    """Submit, then run every message the broker was given, as a worker would, until the job ends."""
    job_id = api.post(f"/functions/{function_id}/run", json={"input": {}, "wait_s": 0}).get_json()["job_id"]
    for _ in range(10):
        job = api.get(f"/jobs/{job_id}").get_json()
        if job["status"] in ("SUCCESS", "FAILED"):
            return job
        execute.run(services, job_id)
    raise AssertionError(f"the job did not end: {job}")


def test_a_handler_failing_twice_with_two_retries_succeeds_on_its_third_attempt(services, api):
    function_id = deploy(api, {"max": 2, "on": ["runtime_error"], "backoff_s": 0.5})
    job = run_until_terminal(services, api, function_id)
    assert job["status"] == "SUCCESS" and job["attempt"] == 3 and job["result"] == {"attempt": 3}
    assert [(a["attempt"], a["error"]["type"]) for a in job["attempts"]] == [(1, "runtime_error"),
                                                                             (2, "runtime_error")]
    assert "attempt 1 fails" in job["attempts"][0]["error"]["message"]
    assert all(a["started_at"] and a["finished_at"] for a in job["attempts"])
    # Published once by the API, then once per retry, after the doubling backoff.
    assert [sent.countdown_s for sent in services.broker.sent] == [0, 0.5, 1.0]


def test_with_one_retry_it_ends_failed_with_both_attempts_recorded(services, api):
    function_id = deploy(api, {"max": 1, "backoff_s": 0})
    job = run_until_terminal(services, api, function_id)
    assert job["status"] == "FAILED" and job["attempt"] == 2
    assert job["error"]["type"] == "runtime_error" and "attempt 2 fails" in job["error"]["message"]
    assert [(a["attempt"], a["error"]["type"]) for a in job["attempts"]] == [(1, "runtime_error"),
                                                                             (2, "runtime_error")]


def test_a_failure_the_policy_does_not_name_is_final(services, api):
    function_id = deploy(api, {"max": 3, "on": ["timeout"]})
    job = run_until_terminal(services, api, function_id)
    assert job["status"] == "FAILED" and job["attempt"] == 1 and len(job["attempts"]) == 1


def test_a_lost_worker_is_retried_and_the_lost_holder_cannot_finish(services, api):
    function_id = deploy(api, {"max": 1, "on": ["worker_lost"], "backoff_s": 0})
    job_id = api.post(f"/functions/{function_id}/run", json={"wait_s": 0}).get_json()["job_id"]
    services.jobs.claim(job_id, "host:1")
    record = services.jobs.table.get(job_id)  # the holder dies: its lease runs out
    expired = {**record, "rev": record["rev"] + 1, "lease_until": 0}
    assert services.jobs.table.replace(job_id, expired, record["rev"], services.jobs._entries(expired))
    Reaper(services).run_once()
    retried = services.jobs.get(job_id)
    assert retried["status"] == Status.PENDING and retried["attempt"] == 2
    assert retried["attempts"][0]["error"]["type"] == "worker_lost"
    assert services.jobs.finish(job_id, "host:1", Status.SUCCESS, result=1) is None
    assert services.broker.sent[-1] == (RUN_TASK, job_id, 0, None)


def test_a_cancel_is_never_retried(services, api):
    function_id = deploy(api, {"max": 5})
    job_id = api.post(f"/functions/{function_id}/run", json={"wait_s": 0}).get_json()["job_id"]
    services.jobs.claim(job_id, "host:1")
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = api.get(f"/jobs/{job_id}").get_json()
    assert job["status"] == "FAILED" and job["error"]["type"] == "cancelled" and job["attempt"] == 1


def test_the_streamed_status_names_the_attempt(services, api):
    function_id = deploy(api, {"max": 1, "backoff_s": 0})
    job = run_until_terminal(services, api, function_id)
    events = services.jobs.events.read(services.jobs.get(job["job_id"])["tenant"], job["job_id"], "0-0", 0)
    statuses = [data for _, kind, data in events if kind == "status"]
    assert statuses == [{"status": "PENDING"}, {"status": "PROCESSING"}, {"status": "PENDING", "attempt": 2},
                        {"status": "PROCESSING", "attempt": 2}, {"status": "FAILED", "attempt": 2}]


@pytest.mark.parametrize("policy, message", [
    ({"max": 6}, "from 0 to 5"),
    ({"max": True}, "from 0 to 5"),
    ({}, "from 0 to 5"),
    ({"max": 1, "on": []}, "non-empty list"),
    ({"max": 1, "on": ["cancelled"]}, "cannot name cancelled"),
    ({"max": 1, "backoff_s": -1}, "from 0 to 300"),
    ({"max": 1, "every": 2}, "unknown retries field(s): every"),
    ("3", "must be an object"),
])
def test_a_malformed_policy_is_a_400_naming_the_rule(api, policy, message):
    response = api.post("/functions", json={"name": "bad", "code": FLAKY, "retries": policy})
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]


def test_the_policy_is_shown_with_defaults_and_can_be_removed(api):
    function_id = deploy(api, {"max": 2})
    shown = api.get(f"/functions/{function_id}").get_json()
    assert shown["retries"] == {"max": 2, "on": ["runtime_error", "timeout", "memory_limit", "ai_unavailable",
                                                 "sandbox_error", "worker_lost"], "backoff_s": 1.0}
    removed = api.put(f"/functions/{function_id}", json={"retries": None}).get_json()
    assert removed["retries"] is None and removed["version"] == 2


def test_delays_double_and_stop_after_max():
    policy = check({"max": 3, "backoff_s": 2})
    assert [delay_before_next(policy, attempt, "timeout") for attempt in (1, 2, 3, 4)] == [2, 4, 8, None]
    assert delay_before_next(policy, 1, "cancelled") is None
    assert check({"max": 0}) is None
    with pytest.raises(RetryPolicyError):
        check({"max": 2.5})
