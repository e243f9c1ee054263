"""Job history (GET /jobs, GET /functions/<id>/jobs): pages newest first with no repeat and no gap,
filters, tenancy and retention, on the embedded store and on DynamoDB (moto server)."""

from __future__ import annotations

import time

import pytest

from nanogrid.errors import NotFound
from nanogrid.worker import execute
from support.app import App
from support.waiting import eventually

ECHO = "def handler(event, context):\n    return event\n"
FAILS = "def handler(event, context):\n    raise ValueError('no')\n"


@pytest.fixture
def history_settings(store_settings):
    """Either store (support.fixtures.store_settings), with no cap on a tenant's queued runs."""
    return store_settings.replace(tenant_max_queued=0)


@pytest.fixture
def history_app(history_settings) -> App:
    return App(history_settings)


def deploy(api, name, code=ECHO) -> str:
    response = api.post("/functions", json={"name": name, "code": code})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["function_id"]


def submit(api, function_id, event) -> str:
    response = api.post(f"/functions/{function_id}/run", json={"input": event, "wait_s": 0})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["job_id"]


def pages(api, path, **params) -> list[list[str]]:
    found, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, query_string=query)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        found.append([job["job_id"] for job in body["jobs"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def test_250_runs_page_newest_first_with_no_repeat_and_no_gap_while_more_arrive(history_app):
    api = history_app.client
    function_id = deploy(api, "busy")
    made = [submit(api, function_id, n) for n in range(250)]
    found, cursor = [], None
    while True:
        body = api.get(f"/functions/{function_id}/jobs", query_string={"limit": 100, **(
            {"cursor": cursor} if cursor else {})}).get_json()
        found.append([job["job_id"] for job in body["jobs"]])
        submit(api, function_id, "arrived while paging")  # newer than every page: never in a later one
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in found] == [100, 100, 50]
    assert [job_id for page in found for job_id in page] == made[::-1]
    # GET /jobs?function_id= is the same list; GET /jobs, every function of the tenant.
    assert pages(api, "/jobs", function_id=function_id, limit=200)[0][:3] == pages(
        api, f"/functions/{function_id}/jobs", limit=3)[0]


def test_filters_by_status_and_time(history_app):
    services, api = history_app.services, history_app.client
    ok, bad = deploy(api, "ok"), deploy(api, "bad", FAILS)
    early = [submit(api, ok, n) for n in range(3)]
    middle = time.time()
    time.sleep(0.05)
    late_ok, late_bad = submit(api, ok, 9), submit(api, bad, 9)
    for job_id in (early[0], late_ok, late_bad):
        execute.run(services, job_id)
    flat = lambda found: [job_id for page in found for job_id in page]  # noqa: E731
    assert flat(pages(api, "/jobs", status="FAILED")) == [late_bad]
    assert flat(pages(api, "/jobs", status="SUCCESS", limit=1)) == [late_ok, early[0]]  # one a page
    assert flat(pages(api, "/jobs", status="PENDING")) == early[:0:-1]
    assert flat(pages(api, "/jobs", since=middle)) == [late_bad, late_ok]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1e6):06d}Z"
    assert flat(pages(api, "/jobs", until=iso)) == early[::-1]
    for bad_query, message in (({"status": "DONE"}, "status must be one of"), ({"limit": 0}, "limit must be"),
                               ({"since": "yesterday"}, "since must be an ISO 8601 time"),
                               ({"cursor": "bogus"}, "cursor is not one this API gave out"),
                               ({"order": "asc"}, "unknown parameter(s): order; this route takes:")):
        refused = api.get("/jobs", query_string=bad_query)
        assert refused.status_code == 400 and message in refused.get_json()["error"]["message"], refused.get_json()


def test_another_tenant_sees_none_of_them(history_app):
    api = history_app.client
    function_id = deploy(api, "mine")
    submit(api, function_id, 1)
    other = history_app.new_key("other")
    assert api.get("/jobs", headers=other).get_json() == {"jobs": [], "next_cursor": None}
    assert api.get(f"/functions/{function_id}/jobs", headers=other).status_code == 404
    assert api.get("/jobs", query_string={"function_id": function_id}, headers=other).status_code == 404


def test_retention_removes_finished_jobs_and_their_outputs(history_settings):
    app = App(history_settings.replace(job_retention_days=1 / 86400, inline_output_bytes=10))  # a second
    services, api = app.services, app.client
    function_id = deploy(api, "brief")
    done, waiting = submit(api, function_id, "x" * 100), submit(api, function_id, "y")
    execute.run(services, done)
    record = services.jobs.get(done)
    assert record["output_ref"]  # its output went to the output store

    def listed() -> list[str]:
        return [job["job_id"] for job in api.get("/jobs").get_json()["jobs"]]

    if app.settings.storage == "local":
        # The embedded store's sweep removes the job once its retention has passed.
        eventually(lambda: services.jobs.expire() == 1, 30, "the finished job's retention passes and the sweep removes it")
        with pytest.raises(NotFound):
            services.jobs.outputs.get(record["output_ref"])
    # DynamoDB removes expired items itself (TTL); until it does, they are no longer listed.
    eventually(lambda: listed() == [waiting], 30, "the finished job is no longer listed")
    assert services.jobs.get(waiting)["status"] == "PENDING"  # unfinished jobs never expire
