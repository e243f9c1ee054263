"""Idempotency-Key on POST /functions/<id>/run: one key, one job, whichever API answers and however
many retries race; another request under a used key is refused. On the embedded store and on
DynamoDB (moto server)."""

from __future__ import annotations

import threading
import time

import pytest

from nanogrid.jobs.store import idempotency_record_id
from nanogrid.services import Services
from nanogrid.worker import execute
from support.app import App

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture
def shared_settings(store_settings):
    """Either store (support.fixtures.store_settings), with no cap on a tenant's queued runs."""
    return store_settings.replace(tenant_max_queued=0)


@pytest.fixture
def two_apis(shared_settings):
    """Two API instances with nothing in common but the store and Redis, as two processes are."""
    return [App(shared_settings).client for _ in range(2)]


def deploy(api) -> str:
    response = api.post("/functions", json={"name": "echo", "code": ECHO})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["function_id"]


def run(api, function_id, key, event="order-17"):
    return api.post(f"/functions/{function_id}/run", json={"input": event, "wait_s": 0},
                    headers={"Idempotency-Key": key})


def history(api, function_id) -> list[str]:
    return [job["job_id"] for job in api.get(f"/functions/{function_id}/jobs").get_json()["jobs"]]


def test_a_retry_through_another_api_gets_the_first_job_and_says_it_is_a_replay(two_apis):
    first_api, second_api = two_apis
    function_id = deploy(first_api)
    first = run(first_api, function_id, "checkout-17")
    again = run(second_api, function_id, "checkout-17")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["job_id"] == first.get_json()["job_id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert history(second_api, function_id) == [first.get_json()["job_id"]]


def test_twenty_racing_retries_on_two_apis_make_one_job(two_apis):
    function_id = deploy(two_apis[0])
    answers, start = [], threading.Barrier(20)

    def retry(n):
        start.wait()
        answers.append(run(two_apis[n % 2], function_id, "racing-key"))

    threads = [threading.Thread(target=retry, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answer.status_code for answer in answers) == [202] * 20
    job_ids = {answer.get_json()["job_id"] for answer in answers}
    assert len(job_ids) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert history(two_apis[1], function_id) == list(job_ids)


def test_the_same_key_with_another_input_is_refused_and_makes_nothing(two_apis):
    api = two_apis[0]
    function_id = deploy(api)
    first = run(api, function_id, "k-1", event="first")
    other = run(two_apis[1], function_id, "k-1", event="second")
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_conflict"
    assert "another request" in other.get_json()["error"]["message"]
    assert history(api, function_id) == [first.get_json()["job_id"]]


def test_keys_belong_to_a_function_and_request_so_other_keys_and_no_key_make_new_jobs(two_apis):
    api = two_apis[0]
    function_id = deploy(api)
    keyed = {run(api, function_id, key).get_json()["job_id"] for key in ("a", "b", "a", "b")}
    plain = {api.post(f"/functions/{function_id}/run", json={"input": "order-17", "wait_s": 0}).get_json()["job_id"]
             for _ in range(2)}
    assert len(keyed) == 2 and len(plain) == 2 and not keyed & plain
    assert len(history(api, function_id)) == 4


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_malformed_key_is_a_400_that_names_the_rule(two_apis, key):
    api = two_apis[0]
    function_id = deploy(api)
    response = api.post(f"/functions/{function_id}/run", json={"input": 1, "wait_s": 0},
                        headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")})
    assert response.status_code == 400, response.get_json()
    assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert history(api, function_id) == []


def test_a_replay_with_wait_returns_the_finished_result(shared_settings, two_apis):
    api = two_apis[0]
    function_id = deploy(api)
    job_id = run(api, function_id, "paid").get_json()["job_id"]
    execute.run(Services(shared_settings), job_id)
    replay = api.post(f"/functions/{function_id}/run", json={"input": "order-17", "wait_s": 5},
                      headers={"Idempotency-Key": "paid"})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["job_id"] == job_id and replay.get_json()["result"] == "order-17"
    assert "Location" not in replay.headers


def test_an_expired_key_stands_for_a_new_job(shared_settings, two_apis):
    services = Services(shared_settings)
    api = two_apis[0]
    function_id = deploy(api)
    first = run(api, function_id, "monthly").get_json()["job_id"]
    tenant = services.functions.get(function_id)["tenant"]
    record_id = idempotency_record_id(tenant, "monthly")
    record = services.jobs.table.get(record_id)
    assert services.jobs.table.replace(record_id, {**record, "rev": record["rev"] + 1,
                                                   "expires_at": time.time() - 1}, record["rev"])
    second = run(two_apis[1], function_id, "monthly")
    assert second.status_code == 202 and "Idempotent-Replayed" not in second.headers
    assert second.get_json()["job_id"] != first
