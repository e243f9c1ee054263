"""Rate limiting across two real gunicorn workers (`nanogrid api`) sharing one real Redis.

The limit holds across both workers, 429 carries Retry-After whichever worker answers, a spoofed
X-Forwarded-For does not reset it when no trusted proxy is configured, a key has its own budget,
and the key never appears in the server's output (access lines included). Also in-process: with
a trusted proxy the address the proxy appended is the one that counts, and an unreachable Redis
lets requests through with one warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests
from services import free_port, wait_for_http

from nanogrid import keys, storage
from nanogrid.config import RateLimit, Settings

LIMIT = 20


class Api:
    def __init__(self, url: str, log: Path, env: dict):
        self.url, self.log, self.env = url, log, env

    def lines(self) -> list[dict]:
        docs = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                docs.append(json.loads(line))
            except ValueError:
                continue
        return docs

    def answered(self, path: str) -> dict[int, set[int]]:
        """status -> pids of the gunicorn workers whose access lines answered path."""
        found: dict[int, set[int]] = {}
        for doc in self.lines():
            if doc.get("logger") == "gunicorn.access" and doc.get("path") == path:
                found.setdefault(doc["status"], set()).add(doc["pid"])
        return found

    def workers(self) -> set[int]:
        return {doc["pid"] for doc in self.lines() if doc.get("logger") == "gunicorn.error"
                and "Booting worker" in doc.get("message", "")}


@pytest.fixture
def api(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGRID_")}
    env.update(NANOGRID_DATA_DIR=str(tmp_path / "data"), NANOGRID_STORAGE="local", NANOGRID_ARCHIVE="none",
               NANOGRID_REDIS_URL=redis_url, NANOGRID_BROKER_URL=redis_url, NANOGRID_SANDBOX="process",
               NANOGRID_RATE_LIMIT=f"{LIMIT} per 10 minutes", NANOGRID_BIND=f"127.0.0.1:{port}",
               NANOGRID_API_WORKERS="2", NANOGRID_API_THREADS="4", NANOGRID_LOG_FORMAT="json",
               PYTHONPATH=os.pathsep.join(sys.path))
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "nanogrid.cli", "api"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    api = Api(f"http://127.0.0.1:{port}", log, env)
    try:
        def alive() -> bool:
            return process.poll() is None

        if not wait_for_http(api.url + "/health", 60, alive):
            pytest.fail("nanogrid api did not come up:\n" + log.read_text()[-3000:])
        deadline = time.monotonic() + 30
        while len(api.workers()) < 2:
            if time.monotonic() > deadline or not alive():
                pytest.fail("two gunicorn workers did not boot:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        yield api
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def until_both_workers_refuse(api: Api, path: str, headers: dict | None = None) -> None:
    """Keep sending (refused, so uncounted) requests until each worker has answered one with 429."""
    for _ in range(40):
        if len(api.answered(path).get(429, set())) >= 2:
            return
        for response in fire(api.url + path, 16, headers):
            assert_limited(response)
        time.sleep(0.2)  # access lines are written after the response
    pytest.fail(f"only one worker ever answered: {api.answered(path)}")


def test_the_limit_holds_across_two_workers_and_spoofed_addresses(api):
    responses = fire(api.url + "/limits", LIMIT + 10)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * LIMIT + [429] * 10, statuses
    for response in responses:
        if response.status_code == 429:
            assert_limited(response)
    until_both_workers_refuse(api, "/limits")
    time.sleep(0.3)
    answered = api.answered("/limits")
    assert len(answered[429]) == 2 and answered[429] <= api.workers(), answered
    # Exactly LIMIT requests got through in all, whichever worker served them.
    ok_lines = [d for d in api.lines() if d.get("logger") == "gunicorn.access" and d.get("path") == "/limits"
                and d["status"] == 200]
    assert len(ok_lines) == LIMIT
    assert requests.get(api.url + "/health/live", timeout=10).status_code == 200  # probes are never limited
    assert requests.get(api.url + "/metrics", timeout=10).status_code == 200

    # A key has its own budget, shared by both workers too; the address stays limited without it.
    store = keys.KeyStore(storage.key_table(Settings.from_env(api.env)))
    key, _ = store.create("acme")
    bearer = {"Authorization": f"Bearer {key}"}
    keyed = fire(api.url + "/functions", LIMIT + 5, bearer)
    assert sorted(r.status_code for r in keyed) == [200] * LIMIT + [429] * 5
    until_both_workers_refuse(api, "/functions", bearer)
    assert_limited(requests.get(api.url + "/limits", headers={"X-Forwarded-For": spoofed()}, timeout=10))

    # Secrets never logged: not the key, not its secret, not the Authorization header.
    output = api.log.read_text(errors="replace")
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
