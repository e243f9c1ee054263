"""Completion callbacks: the job document POSTed to a receiver the test runs, signed with the
tenant's secret, tried again until the receiver takes it, every attempt recorded on the job; and
the guard that keeps callbacks away from loopback, link-local and the platform's own addresses,
at request time and again at connect time."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Iterator

import pytest

from nanogrid.callbacks import CallbackRefused, Guard
from nanogrid.worker import execute
from support.app import RecordingBroker
from support.receiver import Receiver

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = []

    def make(answers):
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for server in made:
        server.close()


def platform(make_app, **changes):
    """The Services and the API's test client of an app whose task messages are recorded, not sent:
    the test delivers each callback itself (support.app.RecordingBroker)."""
    app = make_app(broker=RecordingBroker(), **changes)
    return app.services, app.client


@pytest.fixture
def open_to_loopback(make_app):
    """A platform that lets callbacks reach loopback, where the test's receiver listens."""
    return platform(make_app, callback_allowed_networks=("127.0.0.0/8",), callback_backoff_s=0.5,
                    callback_max_attempts=4)


def deploy(api) -> str:
    response = api.post("/functions", json={"name": "echo", "code": ECHO})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["function_id"]


def run_and_deliver(services, api, body) -> tuple[dict, list[float]]:
    """Run the job as a worker would, then each callback attempt its predecessor queued; the job
    as the API shows it afterwards, and the waits the attempts asked for."""
    job_id = api.post(f"/functions/{deploy(api)}/run", json={"wait_s": 0, **body}).get_json()["job_id"]
    execute.run(services, job_id)
    waits = []
    queued = [sent for sent in services.broker.sent if sent[0] == "nanogrid.deliver_callback"]
    assert queued == [("nanogrid.deliver_callback", job_id, 0, None)], "the finish queues one delivery, on the task queue"
    while (delay := services.callbacks.deliver(job_id)) is not None:
        waits.append(delay)
    return api.get(f"/jobs/{job_id}").get_json(), waits


def test_the_receiver_gets_the_signed_job_document_after_two_failures(open_to_loopback, receiver):
    services, api = open_to_loopback
    hook = receiver([500, 503, 200])
    job, waits = run_and_deliver(services, api, {"input": {"order": 17}, "callback_url": hook.url})
    assert job["status"] == "SUCCESS" and job["result"] == {"order": 17}
    assert job["callbacks"] == [{"url": hook.url, "attempts": 3, "status": "delivered", "last_error": None,
                                 "last_status_code": 200, "delivered_at": job["callbacks"][0]["delivered_at"]}]
    assert waits == [0.5, 1.0], "the wait doubles after each failed attempt"
    assert [r["path"] for r in hook.received] == ["/hooks/nanogrid?from=test"] * 3
    assert [r["headers"]["X-NanoGrid-Delivery"] for r in hook.received] == [
        f"{job['job_id']}/1", f"{job['job_id']}/2", f"{job['job_id']}/3"]
    # Checked as a receiver checks it, from the secret the tenant reads and the bytes it got.
    secret = api.get("/callbacks/signing-secret").get_json()["secret"]
    last = hook.received[-1]
    fields = dict(part.split("=", 1) for part in last["headers"]["X-NanoGrid-Signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + last["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 300
    sent = json.loads(last["body"])
    assert sent["job_id"] == job["job_id"] and sent["status"] == "SUCCESS" and sent["result"] == {"order": 17}


def test_a_rotated_secret_signs_what_follows_and_the_old_one_no_longer_verifies(open_to_loopback, receiver):
    services, api = open_to_loopback
    old = api.get("/callbacks/signing-secret").get_json()["secret"]
    new = api.post("/callbacks/signing-secret/rotate").get_json()["secret"]
    assert new != old and api.get("/callbacks/signing-secret").get_json()["secret"] == new
    hook = receiver([200])
    run_and_deliver(services, api, {"callback_url": hook.url})
    signed = hook.received[0]
    fields = dict(part.split("=", 1) for part in signed["headers"]["X-NanoGrid-Signature"].split(","))
    for secret, verifies in ((new, True), (old, False)):
        digest = hmac.new(secret.encode(), fields["t"].encode() + b"." + signed["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(fields["v1"], digest) is verifies


def test_a_receiver_that_never_takes_it_leaves_the_run_as_it_ended(open_to_loopback, receiver):
    services, api = open_to_loopback
    hook = receiver([500])
    job, waits = run_and_deliver(services, api, {"input": 3, "callback_url": hook.url})
    assert job["status"] == "SUCCESS" and job["result"] == 3
    assert job["callbacks"][0]["status"] == "failed" and job["callbacks"][0]["attempts"] == 4
    assert job["callbacks"][0]["last_error"] == "the receiver answered 500"
    assert len(hook.received) == 4 and waits == [0.5, 1.0, 2.0]


def test_a_redirect_is_not_followed(open_to_loopback, receiver):
    services, api = open_to_loopback
    hook = receiver([302])
    job, _ = run_and_deliver(services, api, {"callback_url": hook.url})
    assert [r["path"] for r in hook.received] == ["/hooks/nanogrid?from=test"] * 4
    assert job["callbacks"][0]["last_status_code"] == 302


def test_a_function_default_callback_applies_to_its_runs(open_to_loopback, receiver):
    services, api = open_to_loopback
    hook = receiver([200])
    function_id = api.post("/functions", json={"name": "hooked", "code": ECHO, "callback_url": hook.url}
                           ).get_json()["function_id"]
    assert api.get(f"/functions/{function_id}").get_json()["callback_url"] == hook.url
    job_id = api.post(f"/functions/{function_id}/run", json={"wait_s": 0}).get_json()["job_id"]
    execute.run(services, job_id)
    assert services.callbacks.deliver(job_id) is None
    assert len(hook.received) == 1 and json.loads(hook.received[0]["body"])["job_id"] == job_id


@pytest.mark.parametrize("url, reason", [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://127.0.0.1:8080/functions", "loopback"),
    ("http://localhost:6379/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("ftp://example.org/", "http:// or https://"),
    ("http://user:pw@example.org/", "user name or password"),
    ("http://no-such-host.invalid/", "does not resolve"),
    ("https://[5z", "not a valid URL"),
    ("http://a..b/", "not a valid host name"),
])
def test_callbacks_to_forbidden_places_are_refused_at_request_time(make_app, url, reason):
    services, api = platform(make_app)
    function_id = deploy(api)
    response = api.post(f"/functions/{function_id}/run", json={"wait_s": 0, "callback_url": url})
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "callback_refused"
    assert reason in response.get_json()["error"]["message"]
    assert api.get(f"/functions/{function_id}/jobs").get_json()["jobs"] == []
    refused = api.put(f"/functions/{function_id}", json={"callback_url": url})
    assert refused.status_code == 400 and reason in refused.get_json()["error"]["message"]


def test_the_platforms_own_address_is_refused(local_settings):
    own = local_settings.replace(ai_endpoint="http://10.20.30.40:11434")  # the AI node's address
    with pytest.raises(CallbackRefused, match="the platform's own"):
        Guard(own, resolver=lambda host, port: ["10.20.30.40"]).check_url("http://models.internal/")
    assert Guard(own, resolver=lambda host, port: ["10.20.30.41"]).check_url("http://other.internal/")


def test_a_name_that_resolves_elsewhere_at_connect_time_reaches_nothing(local_settings, receiver):
    """DNS rebinding: public when the URL is accepted, loopback when the callback connects."""
    hook = receiver([200])
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    guard = Guard(local_settings, resolver=lambda host, port: next(answers))
    url = f"http://rebinding.example:{hook.port}/"
    assert guard.check_url(url) == url
    delivery = guard.post(url, b"{}", {})
    assert not delivery.delivered and "loopback" in delivery.error
    assert hook.received == []
