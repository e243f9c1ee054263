"""Schedules over the API: create, list, read, change, delete; what is refused; and the scheduler
firing each tick exactly once with two schedulers at once, one of them dying mid-way (even between
creating a tick's run and publishing it)."""

from __future__ import annotations

import threading
import time

import pytest

from nanogrid import scheduler, schedules
from nanogrid.scheduler import Scheduler
from nanogrid.services import Services
from nanogrid.worker import execute
from support.app import App, RecordingBroker, recording

ECHO = "def handler(event, context):\n    return event\n"


@pytest.fixture
def scheduling_app(make_app) -> App:
    """The API on an app whose task messages are recorded, not sent (support.app.RecordingBroker):
    what a tick publishes is seen, and run by the test when it chooses."""
    return make_app(broker=RecordingBroker())


@pytest.fixture
def services(scheduling_app):
    return scheduling_app.services


@pytest.fixture
def api(scheduling_app):
    return scheduling_app.client


@pytest.fixture
def function_id(api) -> str:
    return api.post("/functions", json={"name": "tick", "code": ECHO}).get_json()["function_id"]


def scheduled(api, function_id, **body) -> dict:
    response = api.post(f"/functions/{function_id}/schedules", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def tick_jobs(api, function_id) -> list[dict]:
    return api.get(f"/functions/{function_id}/jobs", query_string={"limit": 200}).get_json()["jobs"]


def test_a_schedule_is_created_listed_read_changed_and_deleted(api, function_id):
    made = scheduled(api, function_id, cron="*/5 * * * *", timezone="Europe/Berlin", input={"report": "daily"},
                     overlap="skip")
    assert made["cron"] == "*/5 * * * *" and made["interval_s"] is None and made["enabled"] is True
    assert made["next_run_at"].endswith("Z") and made["input"] == {"report": "daily"}
    path = f"/functions/{function_id}/schedules/{made['schedule_id']}"
    assert api.get(path).get_json() == made
    assert api.get(f"/functions/{function_id}/schedules").get_json()["schedules"] == [made]
    changed = api.patch(path, json={"interval_s": 60, "enabled": False}).get_json()
    assert changed["interval_s"] == 60 and changed["cron"] is None and changed["next_run_at"] is None
    assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.get(f"/functions/{function_id}/schedules").get_json()["schedules"] == []


@pytest.mark.parametrize("body, message", [
    ({"cron": "61 * * * *"}, "not a cron expression"),
    ({"cron": "* * * *"}, "five fields"),
    ({"cron": "*/5 * * * * *"}, "five fields"),
    ({}, "exactly one of"),
    ({"cron": "* * * * *", "interval_s": 5}, "exactly one of"),
    ({"interval_s": 0.5}, "from 1 to"),
    ({"interval_s": 5, "timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"interval_s": 5, "overlap": "queue"}, "overlap must be"),
    ({"interval_s": 5, "enabled": "yes"}, "enabled must be"),
    ({"interval_s": 5, "every": 3}, "unknown field(s): every"),
])
def test_a_bad_schedule_is_a_400_naming_the_rule(api, function_id, body, message):
    response = api.post(f"/functions/{function_id}/schedules", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    assert api.get(f"/functions/{function_id}/schedules").get_json()["schedules"] == []


def test_deleting_the_function_deletes_its_schedules(api, services, function_id):
    made = scheduled(api, function_id, interval_s=10)
    assert api.delete(f"/functions/{function_id}").status_code == 204
    assert services.schedules.list() == []
    assert api.get(f"/functions/{function_id}/schedules/{made['schedule_id']}").status_code == 404


def test_two_schedulers_fire_every_tick_once_and_one_dying_midway_loses_none(api, services, function_id):
    made = scheduled(api, function_id, interval_s=2, input={"n": 1})
    anchor = services.schedules.get(made["schedule_id"])["anchor"]
    # Two schedulers with Services of their own, as two controllers have; both publish to the test's broker.
    own = [Services(services.settings) for _ in range(2)]
    for each in own:
        recording(each, services.broker)
    first, second = (Scheduler(each) for each in own)
    # 20 s of their life in steps of a quarter second; the second dies (stops) at 10 s.
    for step in range(81):
        now = anchor + step * 0.25
        threads = [threading.Thread(target=s.run_once, args=(now,)) for s in (first, second) if s is first or step < 40]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    jobs = tick_jobs(api, function_id)
    ticks = sorted(job["trigger"]["tick"] for job in jobs)
    assert ticks == [schedules.iso(anchor + 2 * k) for k in range(11)], "each tick of the 20 s, once"
    assert sorted(services.broker.job_ids()) == sorted(job["job_id"] for job in jobs), "each published once"
    assert {job["trigger"]["schedule_id"] for job in jobs} == {made["schedule_id"]}


def test_after_downtime_only_the_latest_missed_tick_fires(api, services, function_id):
    made = scheduled(api, function_id, interval_s=2)
    anchor = services.schedules.get(made["schedule_id"])["anchor"]
    scheduler = Scheduler(services)
    scheduler.run_once(anchor)
    scheduler = Scheduler(services)  # restarted 30 s later
    scheduler.run_once(anchor + 30.5)
    assert sorted(job["trigger"]["tick"] for job in tick_jobs(api, function_id)) == [
        schedules.iso(anchor), schedules.iso(anchor + 30)]


def test_overlap_skip_fires_no_tick_while_the_last_run_has_not_finished(api, services, function_id):
    made = scheduled(api, function_id, interval_s=2, overlap="skip")
    anchor = services.schedules.get(made["schedule_id"])["anchor"]
    scheduler = Scheduler(services)
    scheduler.run_once(anchor)
    scheduler.run_once(anchor + 2.1)  # the first run is still PENDING: skipped
    assert len(tick_jobs(api, function_id)) == 1
    execute.run(services, tick_jobs(api, function_id)[0]["job_id"])
    scheduler.run_once(anchor + 4.1)
    ticks = sorted(job["trigger"]["tick"] for job in tick_jobs(api, function_id))
    assert ticks == [schedules.iso(anchor), schedules.iso(anchor + 4)]


def test_a_deleted_or_disabled_schedule_fires_no_more(api, services, function_id):
    kept = scheduled(api, function_id, interval_s=2)
    gone = scheduled(api, function_id, interval_s=2)
    anchor = services.schedules.get(gone["schedule_id"])["anchor"]
    scheduler = Scheduler(services)
    scheduler.run_once(anchor + 0.1)
    api.delete(f"/functions/{function_id}/schedules/{gone['schedule_id']}")
    api.patch(f"/functions/{function_id}/schedules/{kept['schedule_id']}", json={"enabled": False})
    scheduler.run_once(anchor + 2.1)  # its copy of the schedules is not re-read yet: fire() re-reads them
    fired = sorted((job["trigger"]["schedule_id"], job["trigger"]["tick"]) for job in tick_jobs(api, function_id))
    kept_anchor = services.schedules.get(kept["schedule_id"])["created_at"]
    assert fired == sorted([(kept["schedule_id"], schedules.iso(kept_anchor)), (gone["schedule_id"], schedules.iso(anchor))])


def test_a_cron_schedule_fires_on_its_minutes(api, services, function_id):
    made = scheduled(api, function_id, cron="*/5 * * * *")
    doc = services.schedules.get(made["schedule_id"])
    first = schedules.next_tick(doc, doc["anchor"])
    assert first % 300 == 0 and first - doc["anchor"] <= 300
    scheduler = Scheduler(services)
    scheduler.run_once(first - 1)
    assert tick_jobs(api, function_id) == []
    scheduler.run_once(first + 0.5)
    scheduler.run_once(first + 1.5)
    assert [job["trigger"]["tick"] for job in tick_jobs(api, function_id)] == [schedules.iso(first)]


class SkippableClock:
    """The scheduler's clock of real time (scheduler.time), which the test can move on at once."""

    def __init__(self):
        self.skipped = 0.0

    def time(self) -> float:
        return time.time() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds + 0.1


def skippable_clock(monkeypatch) -> SkippableClock:
    clock = SkippableClock()
    monkeypatch.setattr(scheduler, "time", clock)
    return clock


def test_a_tick_whose_scheduler_died_before_publishing_it_is_published_by_the_other(
        api, services, function_id, monkeypatch):
    clock = skippable_clock(monkeypatch)
    made = scheduled(api, function_id, interval_s=2, input={"n": 1})
    anchor = services.schedules.get(made["schedule_id"])["anchor"]
    # The first scheduler created the tick's job, then died before publishing it.
    job_id = schedules.tick_job_id(made["schedule_id"], anchor)
    services.jobs.create(services.functions.get(function_id), {"n": 1}, job_id=job_id,
                         trigger={"schedule_id": made["schedule_id"], "tick": schedules.iso(anchor)})
    survivor = Scheduler(services)
    survivor.run_once(anchor + 0.1)
    assert services.broker.job_ids() == []  # too early to tell a dead scheduler from a slow one
    # The next tick fires meanwhile: it must not hide the one that was never published.
    survivor.run_once(anchor + 2.1)
    next_tick = schedules.tick_job_id(made["schedule_id"], anchor + 2)
    assert services.broker.job_ids() == [next_tick]
    clock.skip(scheduler.UNPUBLISHED_AFTER_S)
    survivor.run_once(anchor + 2.5)
    assert services.broker.job_ids() == [next_tick, job_id]
    survivor.run_once(anchor + 3.0)
    assert services.broker.job_ids() == [next_tick, job_id], "published once"
    assert execute.run(services, job_id) == "SUCCESS"


def test_a_tick_a_worker_took_is_not_published_again_and_one_left_waiting_runs_once(
        api, services, function_id, monkeypatch):
    clock = skippable_clock(monkeypatch)
    made = scheduled(api, function_id, interval_s=2, input={"n": 1})
    anchor = services.schedules.get(made["schedule_id"])["anchor"]
    first, second = Scheduler(services), Scheduler(services)
    first.run_once(anchor + 0.1)
    [taken] = services.broker.job_ids()
    assert execute.run(services, taken) == "SUCCESS"  # a worker took it at once
    clock.skip(scheduler.UNPUBLISHED_AFTER_S)
    second.run_once(anchor + 0.7)
    assert services.broker.job_ids() == [taken]

    # The next tick waits in a backlog (no worker) past UNPUBLISHED_AFTER_S: published once more,
    # and the two messages run it once.
    first.run_once(anchor + 2.1)
    waiting = schedules.tick_job_id(made["schedule_id"], anchor + 2)
    second.run_once(anchor + 2.2)
    clock.skip(scheduler.UNPUBLISHED_AFTER_S)
    second.run_once(anchor + 2.9)
    second.run_once(anchor + 3.5)
    assert services.broker.job_ids().count(waiting) == 2
    assert [execute.run(services, waiting) for _ in range(2)] == ["SUCCESS", "duplicate"]
