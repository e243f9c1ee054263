"""The reaper keeps the promise that every accepted job reaches exactly one terminal state.

Leases, dispatch checks and the pending timeout are compared with time.time(): here a clock the
test moves, so each test steps exactly to either side of the moment it is about.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nanogrid import bundles
from nanogrid.jobs import Status, index, store
from nanogrid.services import Services
from nanogrid.worker import reaper
from nanogrid.worker.reaper import Reaper
from support.app import recording

LEASE_S = 10
REDISPATCH_AFTER_S = 1
PENDING_TIMEOUT_S = 3
CLAIMERS = 8


class Clock:
    """time.time() as the test sets it (binary fractions of a second, so steps add up exactly);
    the rest of the time module as it is (waits use monotonic and sleep)."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str):
        return getattr(time, name)


class NoContainers:
    def __init__(self):
        self.kept: list[set] = []

    def remove_containers(self, job_ids=None, keep=None) -> int:
        self.kept.append(keep)
        return 0


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """The clock of the job store, its Redis index and the reaper."""
    clock = Clock(1_000_000.0)
    for module in (store, index, reaper):
        monkeypatch.setattr(module, "time", clock)
    return clock


@pytest.fixture
def services(local_settings, clock):
    svc = Services(local_settings.replace(lease_s=LEASE_S, redispatch_after_s=REDISPATCH_AFTER_S,
                                          pending_timeout_s=PENDING_TIMEOUT_S))
    svc.__dict__["sandbox"] = NoContainers()
    recording(svc)  # the run messages the reaper publishes are recorded, not sent
    return svc


@pytest.fixture
def function(services):
    return services.functions.create("f", bundles.from_source("x = 1\n", None), {})


def test_expired_lease_fails_the_job_as_worker_lost(services, function, clock):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    reaper = Reaper(services)
    reaper.run_once()
    assert services.jobs.get(job["job_id"])["status"] == Status.PROCESSING
    assert services.sandbox.kept[-1] == {job["job_id"]}
    clock.advance(LEASE_S - 0.5)  # just before the lease runs out
    reaper.run_once()
    assert services.jobs.get(job["job_id"])["status"] == Status.PROCESSING
    clock.advance(0.5)  # the moment it runs out
    reaper.run_once()
    reaped = services.jobs.get(job["job_id"])
    assert reaped["status"] == Status.FAILED and reaped["error"]["type"] == "worker_lost"
    assert services.jobs.finish(job["job_id"], "host:1", "SUCCESS", result=1) is None, "the lost holder cannot finish"


def test_a_renewed_lease_is_not_reaped(services, function, clock):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    clock.advance(LEASE_S / 2)
    assert services.jobs.renew(job["job_id"], "host:1")
    clock.advance(LEASE_S * 3 / 4)  # past the first lease, within the renewed one
    Reaper(services).run_once()
    assert services.jobs.get(job["job_id"])["status"] == Status.PROCESSING


def test_unclaimed_job_is_dispatched_again_with_backoff_then_failed(services, function, clock):
    dispatched = services.broker.job_ids
    reaper = Reaper(services)
    job = services.jobs.create(function, None)
    clock.advance(REDISPATCH_AFTER_S / 2)
    reaper.run_once()
    assert dispatched() == []  # not due yet
    clock.advance(REDISPATCH_AFTER_S / 2)  # due: unclaimed for REDISPATCH_AFTER_S
    reaper.run_once()
    assert dispatched() == [job["job_id"]]
    record = services.jobs.get(job["job_id"])
    assert record["status"] == Status.PENDING and record["dispatch_attempts"] == 2
    clock.advance(REDISPATCH_AFTER_S * 1.5)  # the second check waits twice as long: not due yet
    reaper.run_once()
    assert dispatched() == [job["job_id"]]
    clock.advance(REDISPATCH_AFTER_S / 2)  # due again, and as old as the pending timeout
    reaper.run_once()
    failed = services.jobs.get(job["job_id"])
    assert dispatched() == [job["job_id"]]
    assert failed["status"] == Status.FAILED and failed["error"]["type"] == "not_started"


def test_claimed_jobs_leave_the_unclaimed_index(services, function, clock):
    job = services.jobs.create(function, None)
    services.jobs.claim(job["job_id"], "host:1")
    clock.advance(REDISPATCH_AFTER_S * 2)
    Reaper(services).run_once()
    assert services.broker.job_ids() == []


class ReadTogether:
    """A claimer's job table whose first read of the job waits until every claimer has read it:
    all of them then compare-and-set against the same rev at once."""

    def __init__(self, table, everyone_read: threading.Barrier):
        self.table = table
        self.everyone_read = everyone_read
        self.waited = False

    def get(self, doc_id: str) -> dict:
        doc = self.table.get(doc_id)
        if not self.waited:
            self.waited = True
            self.everyone_read.wait(timeout=60)
        return doc

    def __getattr__(self, name: str):
        return getattr(self.table, name)


def test_a_claim_wins_once_among_workers_claiming_at_once(store_settings):
    """Workers that each received the job's message (a redelivery, a redispatch) claim it at the
    same moment on the real store: exactly one wins, the others drop their message."""
    svc = Services(store_settings)
    function = svc.functions.create("f", bundles.from_source("x = 1\n", None), {})
    job_id = svc.jobs.create(function, None)["job_id"]
    everyone_read = threading.Barrier(CLAIMERS)

    def claim(worker: int):
        jobs = Services(store_settings).jobs  # each worker with its own clients and connections
        jobs.table = ReadTogether(jobs.table, everyone_read)
        return jobs.claim(job_id, f"host:{worker}")

    with ThreadPoolExecutor(CLAIMERS) as pool:
        claims = list(pool.map(claim, range(CLAIMERS)))
    [won] = [c for c in claims if c is not None]
    stored = svc.jobs.get(job_id)
    assert stored["status"] == Status.PROCESSING and stored["worker_id"] == won["worker_id"]
    assert stored["rev"] == 2, "a losing claim wrote too"
