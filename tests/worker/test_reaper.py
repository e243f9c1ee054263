"""The reaper keeps the promise that every accepted job reaches exactly one terminal state."""

from __future__ import annotations

import time

import pytest

from nanogrid import bundles
from nanogrid.jobs import Status
from nanogrid.services import Services
from nanogrid.worker.reaper import Reaper


class RecordingBroker:
    """Records the run messages the reaper publishes instead of sending them."""

    def __init__(self):
        self.dispatched: list[str] = []

    def send(self, task: str, args: list, countdown_s: float = 0) -> None:
        self.dispatched.append(args[0])


class NoContainers:
    def __init__(self):
        self.kept: list[set] = []

    def remove_containers(self, job_ids=None, keep=None) -> int:
        self.kept.append(keep)
        return 0


@pytest.fixture
def services(local_settings):
    svc = Services(local_settings.replace(lease_s=1, redispatch_after_s=0.1, pending_timeout_s=0.5))
    svc.__dict__["sandbox"] = NoContainers()
    svc.__dict__["broker"] = RecordingBroker()
    return svc


@pytest.fixture
def function(services):
    return services.functions.create("f", bundles.from_source("x = 1\n", None), {})


def test_expired_lease_fails_the_job_as_worker_lost(services, function):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    reaper = Reaper(services)
    reaper.run_once()
    assert services.jobs.get(job["job_id"])["status"] == Status.PROCESSING
    assert services.sandbox.kept[-1] == {job["job_id"]}
    time.sleep(1.1)
    reaper.run_once()
    reaped = services.jobs.get(job["job_id"])
    assert reaped["status"] == Status.FAILED and reaped["error"]["type"] == "worker_lost"
    assert services.jobs.finish(job["job_id"], "host:1", "SUCCESS", result=1) is None, "the lost holder cannot finish"


def test_a_renewed_lease_is_not_reaped(services, function):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    time.sleep(0.6)
    assert services.jobs.renew(job["job_id"], "host:1")
    time.sleep(0.6)
    Reaper(services).run_once()
    assert services.jobs.get(job["job_id"])["status"] == Status.PROCESSING


def test_unclaimed_job_is_dispatched_again_with_backoff_then_failed(services, function):
    dispatched = services.broker.dispatched
    reaper = Reaper(services)
    job = services.jobs.create(function, None)
    time.sleep(0.15)
    reaper.run_once()
    assert dispatched == [job["job_id"]]
    record = services.jobs.get(job["job_id"])
    assert record["status"] == Status.PENDING and record["dispatch_attempts"] == 2
    time.sleep(0.15)  # the second check waits twice as long (0.2 s): not due yet
    reaper.run_once()
    assert dispatched == [job["job_id"]]
    time.sleep(0.35)  # due again, and older than the pending timeout
    reaper.run_once()
    failed = services.jobs.get(job["job_id"])
    assert dispatched == [job["job_id"]]
    assert failed["status"] == Status.FAILED and failed["error"]["type"] == "not_started"


def test_claimed_jobs_leave_the_unclaimed_index(services, function):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    time.sleep(0.2)
    Reaper(services).run_once()
    assert services.broker.dispatched == []


def test_a_claim_wins_once(services, function):
    job = services.jobs.create(function, None)
    assert services.jobs.claim(job["job_id"], "host:1") is not None
    assert services.jobs.claim(job["job_id"], "host:2") is None
