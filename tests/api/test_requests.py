"""Requests a newcomer writes: defaults that do the obvious thing, refusals that say why.

Through Flask's test client (support.app); runs are executed in-process (execute.run)."""

from __future__ import annotations

import time

from nanogrid.worker import execute

ECHO = "def handler(event, context):\n    return event\n"


def deploy(api, name="echo", code=ECHO, **extra):
    response = api.post("/functions", json={"name": name, "code": code, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["function_id"]


def test_a_run_without_input_gets_an_empty_object_and_null_stays_null(app):
    api, services = app.client, app.services
    function_id = deploy(api)
    results = []
    for body in ({}, {"input": None}, {"input": [1]}):
        job = api.post(f"/functions/{function_id}/run", json={**body, "wait_s": 0}).get_json()
        execute.run(services, job["job_id"])
        results.append(api.get(f"/jobs/{job['job_id']}").get_json()["result"])
    assert results == [{}, None, [1]]


def test_wait_s_null_means_the_default(make_app):
    api = make_app(default_wait_s=0.3).client
    function_id = deploy(api)
    started = time.monotonic()
    response = api.post(f"/functions/{function_id}/run", json={"wait_s": None})
    # No worker runs it here: the request waited the default, then answered with the PENDING job.
    assert response.status_code == 202 and response.get_json()["status"] == "PENDING", response.get_json()
    assert time.monotonic() - started >= 0.3


def test_a_taken_name_says_which_name_and_what_to_do(app):
    api = app.client
    deploy(api, name="hello")
    taken = api.post("/functions", json={"name": "hello", "code": ECHO})
    assert taken.status_code == 409
    message = taken.get_json()["error"]["message"]
    assert message.startswith("a function named 'hello' already exists") and "name:" not in message


def test_a_handler_main_py_does_not_define_is_refused_at_upload(app):
    refused = app.client.post("/functions", json={"name": "typo", "code": ECHO, "handler": "hnadler"})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == {
        "code": "invalid_code",
        "message": "handler 'hnadler': main.py defines no top-level 'hnadler' (a def, an assignment or an import)"}


def test_get_job_can_wait_for_the_end(app):
    api, services = app.client, app.services
    function_id = deploy(api)
    job_id = api.post(f"/functions/{function_id}/run", json={"wait_s": 0}).get_json()["job_id"]
    started = time.monotonic()
    pending = api.get(f"/jobs/{job_id}?wait_s=0.3").get_json()
    assert pending["status"] == "PENDING" and time.monotonic() - started >= 0.3  # nobody ran it: it waited
    execute.run(services, job_id)
    assert api.get(f"/jobs/{job_id}?wait_s=5").get_json()["status"] == "SUCCESS"  # ended: no wait
    for bad in ("soon", "-1", "100000"):
        refused = api.get(f"/jobs/{job_id}?wait_s={bad}")
        assert refused.status_code == 400 and "wait_s must be a number from 0 to" in refused.get_json()["error"]["message"]
