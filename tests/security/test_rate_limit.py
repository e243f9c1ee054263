"""Rate limiting across two real gunicorn workers (`nanogrid api`) sharing one real Redis.

The limit holds across both workers, 429 carries Retry-After whichever worker answers, a spoofed
X-Forwarded-For does not reset it when no trusted proxy is configured, a key has its own budget,
and the key never appears in the server's output (access lines included). Also in-process: with
a trusted proxy the address the proxy appended is the one that counts, and an unreachable Redis
lets requests through with one warning.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from nanogrid import keys, storage
from nanogrid.config import RateLimit
from support.servers import free_port
from support.stack import Stack
from support.waiting import eventually

LIMIT = 20


@pytest.fixture
def api(processes, tmp_path, redis_url):
    """`nanogrid api` alone, with two gunicorn workers (both booted) and a small limit."""
    stack = Stack.on_redis(processes, tmp_path, redis_url, db=6, worker=False, env={
        "NANOGRID_RATE_LIMIT": f"{LIMIT} per 10 minutes", "NANOGRID_API_WORKERS": "2", "NANOGRID_API_THREADS": "4"})
    try:
        eventually(lambda: len(gunicorn_workers(stack)) == 2, 60, "both gunicorn workers boot")
        yield stack
    finally:
        stack.stop()


def access_lines(stack: Stack, path: str) -> list[dict]:
    """The access lines of the requests for path (each written after its response)."""
    return [doc for doc in stack.records("api") if doc.get("logger") == "gunicorn.access" and doc.get("path") == path]


def answered(stack: Stack, path: str) -> dict[int, set[int]]:
    """status -> pids of the gunicorn workers whose access lines answered path."""
    found: dict[int, set[int]] = {}
    for doc in access_lines(stack, path):
        found.setdefault(doc["status"], set()).add(doc["pid"])
    return found


def gunicorn_workers(stack: Stack) -> set[int]:
    return {doc["pid"] for doc in stack.records("api") if doc.get("logger") == "gunicorn.error"
            and "Booting worker" in doc.get("message", "")}


def spoofed() -> str:
    return ".".join(str(random.randint(1, 254)) for _ in range(4))


def fire(url: str, count: int, headers: dict | None = None) -> list[requests.Response]:
    """count requests at once, each on its own connection and with its own spoofed X-Forwarded-For."""
    def one(_):
        return requests.get(url, headers={"Connection": "close", "X-Forwarded-For": spoofed(),
                                          "X-Real-IP": spoofed(), **(headers or {})}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def assert_limited(response: requests.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    # Sliding window: a full window still weighs on the next one, for at most period / limit more.
    assert 1 <= retry_after <= 600 + 600 // LIMIT, retry_after


def until_both_workers_refuse(api: Stack, path: str, headers: dict | None = None) -> int:
    """Keep sending (refused, so uncounted) requests until each worker has answered one with 429;
    how many it sent."""
    sent = 0

    def both_refused() -> bool:
        nonlocal sent
        if len(answered(api, path).get(429, set())) >= 2:
            return True
        for response in fire(api.url + path, 16, headers):
            assert_limited(response)
        sent += 16
        return False  # their access lines come after the responses: the next round reads them

    eventually(both_refused, 120, f"both gunicorn workers answer {path} with 429", interval_s=0.2)
    return sent


def test_the_limit_holds_across_two_workers_and_spoofed_addresses(api):
    responses = fire(api.url + "/limits", LIMIT + 10)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * LIMIT + [429] * 10, statuses
    for response in responses:
        if response.status_code == 429:
            assert_limited(response)
    sent = len(responses) + until_both_workers_refuse(api, "/limits")
    # Once every request's access line is written, exactly LIMIT of them got through in all,
    # whichever worker served them.
    written = eventually(lambda: len(found := access_lines(api, "/limits")) == sent and found, 60,
                         "every /limits request's access line is written")
    assert len([d for d in written if d["status"] == 200]) == LIMIT
    assert {d["pid"] for d in written if d["status"] == 429} == gunicorn_workers(api)
    assert requests.get(api.url + "/health/live", timeout=30).status_code == 200  # probes are never limited
    assert requests.get(api.url + "/metrics", timeout=30).status_code == 200

    # A key has its own budget, shared by both workers too; the address stays limited without it.
    store = keys.KeyStore(storage.key_table(api.settings))
    key, _ = store.create("acme")
    bearer = {"Authorization": f"Bearer {key}"}
    keyed = fire(api.url + "/functions", LIMIT + 5, bearer)
    assert sorted(r.status_code for r in keyed) == [200] * LIMIT + [429] * 5
    until_both_workers_refuse(api, "/functions", bearer)
    assert_limited(requests.get(api.url + "/limits", headers={"X-Forwarded-For": spoofed()}, timeout=30))

    # Secrets never logged: not the key, not its secret, not the Authorization header.
    output = api.log("api")
    assert key not in output and key.split("_", 2)[2] not in output and "Bearer" not in output


def test_retry_after_is_honest(make_app):
    app = make_app(rate_limit=RateLimit(2, 2))
    assert [app.client.get("/limits").status_code for _ in range(2)] == [200, 200]
    refused = app.client.get("/limits")
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 3
    time.sleep(retry_after)
    assert app.client.get("/limits").status_code == 200


def test_a_trusted_proxy_makes_x_forwarded_for_count(make_app):
    """In-process: with NANOGRID_TRUSTED_PROXIES=1 the address the proxy appended is the client's."""
    trusting = make_app(rate_limit=RateLimit(3, 60), trusted_proxies=1)
    for client_address in ("198.51.100.7", "198.51.100.8"):
        headers = {"X-Forwarded-For": f"203.0.113.9, {client_address}"}  # the client's own claim comes first
        assert [trusting.client.get("/limits", headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]
    # The client's own (leftmost) entry is ignored: only what the trusted proxy appended counts.
    spoof = {"X-Forwarded-For": f"{spoofed()}, 198.51.100.7"}
    assert trusting.client.get("/limits", headers=spoof).status_code == 429

    direct = make_app(rate_limit=RateLimit(3, 60))  # no trusted proxy: X-Forwarded-For means nothing
    statuses = [direct.client.get("/limits", headers={"X-Forwarded-For": spoofed()}).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_an_unreachable_redis_lets_requests_through_with_one_warning(make_app, caplog):
    app = make_app(rate_limit=RateLimit(1, 60), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="nanogrid.api.ratelimit"):
        assert [app.client.get("/limits").status_code for _ in range(3)] == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "nanogrid.api.ratelimit"]
    assert len(warnings) == 1 and "rate limit not enforced" in warnings[0].getMessage(), warnings
