"""Versions and aliases through the API (Flask's test client, embedded storage, a real Redis):
listing and running older versions, what is kept and what is removed, aliases and their weights,
moving them back, and what is refused."""

from __future__ import annotations

import math

import pytest

from nanogrid import functions
from nanogrid.worker import execute
from support.app import RecordingBroker

RETURNS = "def handler(event, context):\n    return {n!r}\n"


@pytest.fixture
def app(make_app):
    return make_app(broker=RecordingBroker(), keep_versions=3)


def three_versions(app) -> str:
    fn = app.deploy("v", RETURNS.format(n="v1"), env={"WHICH": "one"})
    for n in (2, 3):
        response = app.client.put(f"/functions/{fn['function_id']}", json={"code": RETURNS.format(n=f"v{n}")})
        assert response.get_json()["version"] == n
    return fn["function_id"]


def test_versions_are_listed_newest_first_and_an_older_one_runs_as_it_was(app):
    function_id = three_versions(app)
    listed = app.client.get(f"/functions/{function_id}/versions").get_json()["versions"]
    assert [v["version"] for v in listed] == [3, 2, 1]
    assert len({v["code_sha256"] for v in listed}) == 3
    one = app.client.get(f"/functions/{function_id}/versions/1").get_json()
    assert one["env"] == {"WHICH": "one"} and one["version"] == 1
    job = app.run(function_id, version=1)
    assert job["result"] == "v1" and job["function_version"] == 1, job
    assert app.run(function_id)["result"] == "v3"
    for missing in ("/versions/9", "/versions/zero"):
        assert app.client.get(f"/functions/{function_id}{missing}").status_code == 404
    refused = app.client.post(f"/functions/{function_id}/run", json={"version": 9})
    assert refused.status_code == 404 and "no version 9" in refused.get_json()["error"]["message"]


def test_past_the_kept_count_the_oldest_version_goes_unless_an_alias_points_at_it(app):
    function_id = three_versions(app)
    assert app.client.put(f"/functions/{function_id}/aliases/stable", json={"version": 1}).status_code == 200
    app.client.put(f"/functions/{function_id}", json={"code": RETURNS.format(n="v4")})
    app.client.put(f"/functions/{function_id}", json={"code": RETURNS.format(n="v5")})
    kept = [v["version"] for v in app.client.get(f"/functions/{function_id}/versions").get_json()["versions"]]
    assert kept == [5, 4, 3, 1], kept  # the last three, and the alias's
    assert app.client.get(f"/functions/{function_id}/versions/2").status_code == 404
    code = app.settings.data_dir / "code" / "default" / "functions" / function_id
    assert sorted(p.name for p in code.iterdir()) == ["v1.zip", "v3.zip", "v4.zip", "v5.zip"]


def test_an_alias_runs_its_version_moves_and_rolls_back(app):
    function_id = three_versions(app)
    alias = app.client.put(f"/functions/{function_id}/aliases/prod", json={"version": 1}).get_json()
    assert alias == {"name": "prod", "version": 1, "weights": {}, "previous": None}
    job = app.run(function_id, alias="prod")
    assert job["result"] == "v1" and job["alias"] == "prod" and job["function_version"] == 1
    moved = app.client.put(f"/functions/{function_id}/aliases/prod", json={"version": 2}).get_json()
    assert moved["previous"] == 1 and app.run(function_id, alias="prod")["result"] == "v2"
    assert app.client.get(f"/functions/{function_id}").get_json()["aliases"]["prod"]["version"] == 2
    listed = app.client.get(f"/functions/{function_id}/versions").get_json()["versions"]
    assert [v["aliases"] for v in listed] == [[], ["prod"], []]
    assert app.client.delete(f"/functions/{function_id}/aliases/prod").status_code == 204
    assert app.client.get(f"/functions/{function_id}/aliases/prod").status_code == 404
    missing = app.client.post(f"/functions/{function_id}/run", json={"alias": "prod"})
    assert missing.status_code == 404 and "no alias 'prod'" in missing.get_json()["error"]["message"]


@pytest.mark.parametrize("body, says", [
    ({"version": 7}, "version must be one of the function's versions: 1, 2, 3"),
    ({"version": 1, "weights": {"1": 0.5}}, "is not another version"),
    ({"version": 1, "weights": {"2": 1.5}}, "between 0 and 1"),
    ({"version": 1, "weights": {"2": 0.6, "3": 0.5}}, "add up to 1 or more"),
    ({"weights": {}}, "version must be one of"),
])
def test_an_alias_the_function_cannot_have_is_a_clear_400(app, body, says):
    function_id = three_versions(app)
    response = app.client.put(f"/functions/{function_id}/aliases/prod", json=body)
    assert response.status_code == 400 and says in response.get_json()["error"]["message"], response.get_json()
    assert app.client.put(f"/functions/{function_id}/aliases/-bad", json={"version": 1}).status_code == 400


def test_a_weighted_alias_sends_its_share_of_200_runs_within_a_binomial_bound(app):
    function_id = three_versions(app)
    app.client.put(f"/functions/{function_id}/aliases/canary", json={"version": 1, "weights": {"2": 0.1}})
    versions = [app.client.post(f"/functions/{function_id}/run", json={"alias": "canary", "wait_s": 0})
                .get_json()["function_version"] for _ in range(200)]
    to_two = versions.count(2)
    # 200 draws at p = 0.1: mean 20, standard deviation 4.24; 5 of them either side (about 1 in 1.7 million).
    assert abs(to_two - 20) <= 5 * math.sqrt(200 * 0.1 * 0.9), to_two
    assert set(versions) == {1, 2}


def test_deleting_the_function_removes_its_versions_and_aliases(app):
    function_id = three_versions(app)
    app.client.put(f"/functions/{function_id}/aliases/prod", json={"version": 2})
    assert app.client.delete(f"/functions/{function_id}").status_code == 204
    assert app.client.get(f"/functions/{function_id}/versions").status_code == 404
    assert app.client.get(f"/functions/{function_id}/aliases/prod").status_code == 404
    left = [d for d in app.services.functions.table.scan() if d.get("function_id") == function_id]
    assert left == [], left


def test_max_concurrency_is_a_setting_of_the_function_not_a_new_version(app):
    fn = app.deploy("bounded", RETURNS.format(n=1), max_concurrency=2)
    assert fn["max_concurrency"] == 2
    changed = app.client.put(f"/functions/{fn['function_id']}", json={"max_concurrency": 1}).get_json()
    assert changed["max_concurrency"] == 1 and changed["version"] == 1
    for bad in (0, -1, 1.5, "two", True):
        response = app.client.put(f"/functions/{fn['function_id']}", json={"max_concurrency": bad})
        assert response.status_code == 400, bad


def test_a_run_beyond_max_concurrency_waits_in_pending_and_starts_when_a_slot_frees(app):
    fn = app.deploy("one-at-a-time", RETURNS.format(n="ran"), max_concurrency=1)
    jobs = app.services.jobs
    first, second = (app.client.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0}).get_json()
                     for _ in range(2))
    held = jobs.claim(first["job_id"], "worker-a")
    assert jobs.wait_for_slot(held, "worker-a") is not None  # the one slot
    assert execute.run(app.services, second["job_id"]) == "waiting_for_slot"
    assert jobs.get(second["job_id"])["status"] == "PENDING"
    dispatched = app.broker.job_ids().count(second["job_id"])
    jobs.release_slot(held)  # the first run ended: the waiting one is dispatched
    assert app.broker.job_ids().count(second["job_id"]) == dispatched + 1
    assert execute.run(app.services, second["job_id"]) == "SUCCESS"
    assert functions.served_versions(app.services.functions.get(fn["function_id"])) == {1}
