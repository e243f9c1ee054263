"""Job history (GET /jobs, GET /functions/<id>/jobs): pages newest first with no repeat and no gap,
filters, tenancy and retention, on the embedded store and on DynamoDB (moto server)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from nanogrid.api import create_app
from nanogrid.config import Settings
from nanogrid.errors import NotFound
from nanogrid.services import Services
from nanogrid.storage.provision import ensure_resources
from nanogrid.worker import execute

ECHO = "def handler(event, context):\n    return event\n"
FAILS = "def handler(event, context):\n    raise ValueError('no')\n"


@pytest.fixture(params=["local", "aws"])
def history_settings(request, tmp_path, redis_url) -> Settings:
    redis.Redis.from_url(redis_url).flushdb()
    settings = Settings(data_dir=tmp_path / "data", redis_url=redis_url, broker_url=redis_url, sandbox="process",
                        tenant_max_queued=0)
    if request.param == "aws":
        moto = request.getfixturevalue("moto_server")
        suffix = uuid.uuid4().hex[:10]
        settings = settings.replace(storage="aws", aws_endpoint_url=moto, aws_region="us-east-1",
                                    functions_table=f"functions-{suffix}", jobs_table=f"jobs-{suffix}",
                                    keys_table=f"keys-{suffix}", s3_code_bucket=f"code-{suffix}",
                                    s3_user_data_bucket=f"data-{suffix}")
        ensure_resources(settings)
    return settings


@pytest.fixture
def stack(history_settings):
    services = Services(history_settings)
    return services, create_app(history_settings, services).test_client()


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


def test_250_runs_page_newest_first_with_no_repeat_and_no_gap_while_more_arrive(stack):
    services, api = stack
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


def test_filters_by_status_and_time(stack):
    services, api = stack
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


def test_another_tenant_sees_none_of_them(stack, history_settings):
    services, api = stack
    function_id = deploy(api, "mine")
    submit(api, function_id, 1)
    key, _ = create_app(history_settings, services).extensions["nanogrid_guard"].keys.create("other")
    other = {"Authorization": f"Bearer {key}"}
    assert api.get("/jobs", headers=other).get_json() == {"jobs": [], "next_cursor": None}
    assert api.get(f"/functions/{function_id}/jobs", headers=other).status_code == 404
    assert api.get("/jobs", query_string={"function_id": function_id}, headers=other).status_code == 404


def test_retention_removes_finished_jobs_and_their_outputs(history_settings):
    settings = history_settings.replace(job_retention_days=1 / 86400, inline_output_bytes=10)  # a second
    services = Services(settings)
    api = create_app(settings, services).test_client()
    function_id = deploy(api, "brief")
    done, waiting = submit(api, function_id, "x" * 100), submit(api, function_id, "y")
    execute.run(services, done)
    record = services.jobs.get(done)
    assert record["output_ref"]  # its output went to the output store
    time.sleep(1.1)
    if settings.storage == "local":
        assert services.jobs.expire() == 1
        with pytest.raises(NotFound):
            services.jobs.outputs.get(record["output_ref"])
    # DynamoDB removes expired items itself (TTL); until it does, they are no longer listed.
    listed = [job["job_id"] for job in api.get("/jobs").get_json()["jobs"]]
    assert listed == [waiting]
    assert services.jobs.get(waiting)["status"] == "PENDING"  # unfinished jobs never expire
