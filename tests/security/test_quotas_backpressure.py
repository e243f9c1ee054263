"""Per-tenant quotas (429) and queue backpressure (503), both refused before anything is written."""

from __future__ import annotations

import boto3
import pytest
from openapi_check import conforms

from nanogrid.api import ratelimit
from nanogrid.config import Settings
from nanogrid.jobs.index import queued_key, running_key
from support.servers import free_port

CODE = "x = 1\n"


def submit(app, headers, function_id):
    """Ask for a run (not executed: it stays queued); the API's answer."""
    return app.client.post(f"/functions/{function_id}/run", json={"wait_s": 0}, headers=headers)


def refused(response, status: int, code: str) -> None:
    body = response.get_json()
    assert response.status_code == status, body
    assert body["error"]["code"] == code, body
    assert int(response.headers["Retry-After"]) >= 1


def test_tenant_quotas_on_queued_and_running_jobs(make_app):
    app = make_app(tenant_max_queued=2, tenant_max_running=1)
    a, b = app.new_key("tenant-a"), app.new_key("tenant-b")
    doc = app.client.get("/openapi.json", headers=a).get_json()
    fn = app.deploy("quota-fn", CODE, a)["function_id"]
    first, second = submit(app, a, fn), submit(app, a, fn)
    assert (first.status_code, second.status_code) == (202, 202)
    over = submit(app, a, fn)
    refused(over, 429, "quota_exceeded")
    assert "NANOGRID_TENANT_MAX_QUEUED" in over.get_json()["error"]["message"]
    conforms(doc, "POST", f"/functions/{fn}/run", over)
    assert len(app.services.jobs.table.scan()) == 2  # refused before the job was written

    # Another tenant has its own quota.
    assert submit(app, b, app.deploy("quota-fn", CODE, b)["function_id"]).status_code == 202

    # One job starts: one queued, one running, and the running quota (1) is full.
    jobs = app.services.jobs
    jobs.claim(first.get_json()["job_id"], "host:1")
    refused(submit(app, a, fn), 429, "quota_exceeded")
    assert app.services.redis.zcard(running_key("tenant-a")) == 1
    # It ends: room again for one queued job.
    jobs.finish(first.get_json()["job_id"], "host:1", "SUCCESS", result=None)
    assert app.services.redis.zcard(running_key("tenant-a")) == 0
    assert submit(app, a, fn).status_code == 202
    refused(submit(app, a, fn), 429, "quota_exceeded")
    # A cancel frees a queued place.
    cancelled = app.client.post(f"/jobs/{second.get_json()['job_id']}/cancel", headers=a)
    assert cancelled.status_code == 200
    assert submit(app, a, fn).status_code == 202
    assert app.services.redis.zcard(queued_key("tenant-a")) == 2


def test_stale_quota_entries_expire(make_app):
    """An index update lost to a Redis hiccup cannot hold a tenant's quota forever."""
    app = make_app(tenant_max_running=1)
    headers = app.new_key("tenant-a")
    fn = app.deploy("quota-fn", CODE, headers)["function_id"]
    app.services.redis.zadd(running_key("tenant-a"), {"00000000-0000-4000-8000-000000000001": 1.0})  # long expired
    assert submit(app, headers, fn).status_code == 202
    assert app.services.redis.zcard(running_key("tenant-a")) == 0


def test_backpressure_refuses_runs_before_writing_anything(make_app, monkeypatch):
    monkeypatch.setattr(ratelimit, "QUEUE_DEPTH_CACHE_S", 0.0)
    app = make_app(max_queue_depth=3)
    headers = app.new_key("tenant-a")
    doc = app.client.get("/openapi.json", headers=headers).get_json()
    fn = app.deploy("quota-fn", CODE, headers)["function_id"]
    broker = app.services.redis  # the broker is this Redis: kombu keeps the queue in a list named after it
    queue = app.settings.queue_name
    broker.rpush(queue, "m1", "m2", "m3")
    keys_before = sorted(broker.keys("*"))
    response = submit(app, headers, fn)
    refused(response, 503, "overloaded")
    conforms(doc, "POST", f"/functions/{fn}/run", response)
    assert app.services.jobs.table.scan() == []  # no job record
    assert sorted(broker.keys("*")) == keys_before and broker.llen(queue) == 3  # nothing in Redis either
    # Reads are not refused, and runs are accepted again once the queue drains below the maximum.
    assert app.client.get(f"/functions/{fn}", headers=headers).status_code == 200
    broker.delete(queue)
    accepted = submit(app, headers, fn)
    assert accepted.status_code == 202, accepted.get_json()
    assert len(app.services.jobs.table.scan()) == 1


def test_backpressure_off_and_unreadable_depth_do_not_refuse(make_app, monkeypatch):
    monkeypatch.setattr(ratelimit, "QUEUE_DEPTH_CACHE_S", 0.0)
    off = make_app(max_queue_depth=0)
    headers = off.new_key("t")
    off.services.redis.rpush(off.settings.queue_name, *range(10))
    assert submit(off, headers, off.deploy("quota-fn", CODE, headers)["function_id"]).status_code == 202
    # A broker that cannot be measured refuses nothing here: publishing the run answers for it.
    unreachable = off.settings.replace(broker_url=f"redis://127.0.0.1:{free_port()}/0", max_queue_depth=1)
    gauge = ratelimit.QueueDepth(unreachable)
    assert gauge.depth() is None and not gauge.overloaded()


def test_queue_depth_on_an_sqs_broker(moto_server):
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="ap-northeast-2")
    url = sqs.create_queue(QueueName="nanogrid-depth-test")["QueueUrl"]
    for i in range(4):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    settings = Settings.from_env({"SQS_QUEUE_URL": url, "AWS_ENDPOINT_URL": moto_server,
                                  "AWS_REGION": "ap-northeast-2", "NANOGRID_MAX_QUEUE_DEPTH": "4"})
    gauge = ratelimit.QueueDepth(settings)
    assert gauge.depth() == 4 and gauge.overloaded()
    assert not ratelimit.QueueDepth(settings.replace(max_queue_depth=5)).overloaded()


@pytest.mark.parametrize("text, count, period", [
    ("1000 per 5 minutes", 1000, 300), ("20 per 1 minute", 20, 60), ("20 per minute", 20, 60),
    ("10/second", 10, 1), ("5 per 2 hours", 5, 7200), ("off", 0, 1),
])
def test_rate_limit_setting(text, count, period):
    limit = Settings.from_env({"NANOGRID_RATE_LIMIT": text}).rate_limit
    assert (limit.count, limit.period_s) == (count, period)


@pytest.mark.parametrize("text", ["lots", "0 per minute", "10 per fortnight", "per minute", "-1 per minute"])
def test_a_bad_rate_limit_stops_startup(text):
    from nanogrid.config import ConfigError

    with pytest.raises(ConfigError, match="NANOGRID_RATE_LIMIT"):
        Settings.from_env({"NANOGRID_RATE_LIMIT": text})
