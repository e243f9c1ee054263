"""Tenant isolation: tenant B on every route of tenant A's functions and jobs gets the 404 an unknown id
gets, and A's functions, code, jobs and Redis state are exactly as they were.

Through Flask's test client on embedded storage and a real Redis; runs execute in-process with the
process sandbox (execute.run, the worker's own code path).
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from cryptography.fernet import Fernet
from openapi_check import conforms

from nanogrid.functions import code_key
from nanogrid.jobs.index import queued_key, status_key

HANDLER = "def handler(event, context):\n    return {'doubled': event * 2}\n"
UNKNOWN_FUNCTION = "fn-0123456789abcdef"
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"
UNKNOWN_SCHEDULE = "sch-0123456789abcdef"


@pytest.fixture
def world(make_app):
    app = make_app(secrets_key=Fernet.generate_key().decode())
    a, b = app.new_key("tenant-a"), app.new_key("tenant-b")
    assert app.client.put("/secrets/DB_PASSWORD", json={"value": "tenant-a's"}, headers=a).status_code == 200
    fn = app.deploy("shared-name", HANDLER, a)
    done = app.run(fn["function_id"], 21, a)
    assert done["status"] == "SUCCESS", done
    queued = app.client.post(f"/functions/{fn['function_id']}/run", json={"input": 1, "wait_s": 0},
                             headers=a).get_json()
    schedule = app.client.post(f"/functions/{fn['function_id']}/schedules", json={"cron": "0 0 1 1 *"}, headers=a)
    assert schedule.status_code == 201, schedule.get_json()
    return {"app": app, "a": a, "b": b, "fn": fn, "done": done["job_id"], "queued": queued["job_id"],
            "schedule": schedule.get_json()["schedule_id"]}


def snapshot(world) -> dict:
    """Everything of tenant A's that B must not be able to change, as stored."""
    app, fn = world["app"], world["fn"]
    svc = app.services
    doc = svc.functions.get(fn["function_id"])
    return {
        "function": doc,
        "code": [svc.functions.code.get(code_key("tenant-a", fn["function_id"], v)) for v in range(1, doc["version"] + 1)],
        "jobs": {j: svc.jobs.get(j) for j in (world["done"], world["queued"])},
        "status": {j: svc.redis.get(status_key("tenant-a", j)) for j in (world["done"], world["queued"])},
        "queued": svc.redis.zrange(queued_key("tenant-a"), 0, -1),
        "listing": app.client.get("/functions", headers=world["a"]).get_json(),
        "schedules": svc.schedules.list(fn["function_id"]),
        "secrets": svc.secrets.list("tenant-a"), "secret": svc.secrets.get("tenant-a", "DB_PASSWORD"),
    }


def b_requests(fn_id: str, done: str, queued: str, schedule: str) -> list[tuple[str, str, dict]]:
    """Every route that takes a function or job id, with bodies that would succeed for the owner."""
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("main.py", "def handler(e, c):\n    return 'hijacked'\n")
    return [
        ("GET", f"/functions/{fn_id}", {}),
        ("PUT", f"/functions/{fn_id}", {"json": {"code": "def handler(e, c):\n    return 'hijacked'\n"}}),
        ("PUT", f"/functions/{fn_id}", {"json": {"requirements": "six"}}),
        ("GET", f"/functions/{fn_id}/build", {}),
        ("GET", f"/functions/{fn_id}/versions", {}),
        ("GET", f"/functions/{fn_id}/versions/1", {}),
        ("PUT", f"/functions/{fn_id}/aliases/prod", {"json": {"version": 1}}),
        ("GET", f"/functions/{fn_id}/aliases", {}),
        ("GET", f"/functions/{fn_id}/aliases/prod", {}),
        ("DELETE", f"/functions/{fn_id}/aliases/prod", {}),
        ("GET", "/secrets/DB_PASSWORD", {}),
        ("DELETE", "/secrets/DB_PASSWORD", {}),
        ("PUT", f"/functions/{fn_id}", {"json": {"timeout_s": 1}}),
        ("PUT", f"/functions/{fn_id}", {"data": {"file": (io.BytesIO(zipped.getvalue()), "code.zip")},
                                        "content_type": "multipart/form-data"}),
        ("DELETE", f"/functions/{fn_id}", {}),
        ("POST", f"/functions/{fn_id}/run", {"json": {"input": 1, "wait_s": 0}}),
        ("POST", f"/functions/{fn_id}/run", {"json": {"input": 1, "wait_s": 0.2}}),
        ("POST", f"/functions/{fn_id}/run", {}),
        ("GET", f"/jobs/{done}", {}),
        ("GET", f"/jobs/{queued}", {}),
        ("POST", f"/jobs/{done}/cancel", {}),
        ("POST", f"/jobs/{queued}/cancel", {}),
        ("GET", f"/functions/{fn_id}/jobs", {}),
        ("POST", f"/functions/{fn_id}/schedules", {"json": {"interval_s": 60}}),
        ("GET", f"/functions/{fn_id}/schedules", {}),
        ("GET", f"/functions/{fn_id}/schedules/{schedule}", {}),
        ("PATCH", f"/functions/{fn_id}/schedules/{schedule}", {"json": {"enabled": False}}),
        ("DELETE", f"/functions/{fn_id}/schedules/{schedule}", {}),
        ("GET", f"/jobs/{done}/events", {}),
        ("GET", f"/jobs/{queued}/events", {}),  # last: the owner's stream of a queued job would not end
    ]


def test_tenant_b_gets_404_on_every_route_of_a_and_changes_nothing(world):
    app, b = world["app"], world["b"]
    client = app.client
    doc = client.get("/openapi.json", headers=b).get_json()
    before = snapshot(world)
    mine = b_requests(world["fn"]["function_id"], world["done"], world["queued"], world["schedule"])
    unknown = b_requests(UNKNOWN_FUNCTION, UNKNOWN_JOB, UNKNOWN_JOB, UNKNOWN_SCHEDULE)
    # The matrix must cover every documented operation that takes an id.
    covered = {(m, p.replace(world["fn"]["function_id"], "{function_id}").replace(world["done"], "{job_id}")
                .replace(world["queued"], "{job_id}").replace(world["schedule"], "{schedule_id}")
                    .replace("/versions/1", "/versions/{version}").replace("/aliases/prod", "/aliases/{name}")
                    .replace("/secrets/DB_PASSWORD", "/secrets/{name}"))
               for m, p, _ in mine}
    # PUT /secrets/<name> writes in the caller's own namespace: there is no other tenant's to reach.
    documented = {(m.upper(), p) for p, item in doc["paths"].items() if "{" in p for m in item if m != "parameters"
                  } - {("PUT", "/secrets/{name}")}
    assert documented <= covered, documented - covered

    for (method, path, kwargs), (_, unknown_path, unknown_kwargs) in zip(mine, unknown):
        theirs = client.open(path, method=method, headers=b, **kwargs)
        nobody = client.open(unknown_path, method=method, headers=b, **unknown_kwargs)
        assert theirs.status_code == 404, (method, path, theirs.get_json())
        # Exactly the answer an unknown id gets: same status, code, message (modulo the id), headers.
        same = json.loads(json.dumps(nobody.get_json()).replace(UNKNOWN_FUNCTION, world["fn"]["function_id"])
                          .replace(UNKNOWN_JOB, path.split("/")[2]))
        assert theirs.get_json() == same, (method, path)
        assert sorted(theirs.headers.keys()) == sorted(nobody.headers.keys()), (method, path)
        conforms(doc, method, path, theirs)

    listing = client.get("/functions", headers=b)
    assert listing.status_code == 200 and listing.get_json() == {"functions": []}
    assert snapshot(world) == before
    # B's attempts queued nothing, for A or for B.
    assert len(app.services.jobs.table.scan()) == 2


def test_names_are_per_tenant_and_each_tenant_sees_only_its_own(world):
    app, a, b = world["app"], world["a"], world["b"]
    client = app.client
    before = snapshot(world)
    theirs = client.post("/functions", json={"name": "shared-name", "code": "x = 1\n"}, headers=b)
    assert theirs.status_code == 201, theirs.get_json()
    assert client.post("/functions", json={"name": "shared-name", "code": "x = 2\n"}, headers=b).status_code == 409
    assert [f["function_id"] for f in client.get("/functions", headers=b).get_json()["functions"]] == [
        theirs.get_json()["function_id"]]
    assert [f["function_id"] for f in client.get("/functions", headers=a).get_json()["functions"]] == [
        world["fn"]["function_id"]]
    # B deleting its own function leaves A's name claim, code and jobs alone.
    assert client.delete(f"/functions/{theirs.get_json()['function_id']}", headers=b).status_code == 204
    assert snapshot(world) == before
    assert app.services.functions.find("shared-name", "tenant-a")["function_id"] == world["fn"]["function_id"]


def test_the_tenant_is_part_of_every_stored_key(world):
    app, fn = world["app"], world["fn"]
    svc = app.services
    assert svc.functions.get(fn["function_id"])["tenant"] == "tenant-a"
    assert svc.functions.table.get("name:tenant-a:shared-name")["function_id"] == fn["function_id"]
    assert (app.settings.data_dir / "code" / "tenant-a" / "functions" / fn["function_id"] / "v1.zip").exists()
    job = svc.jobs.get(world["done"])
    assert job["tenant"] == "tenant-a"
    assert svc.redis.get(status_key("tenant-a", world["done"])) == b"SUCCESS"
    assert svc.redis.zrange(queued_key("tenant-a"), 0, -1) == [world["queued"].encode()]
    # The job's public document is unchanged: no tenant field in it.
    public = app.client.get(f"/jobs/{world['done']}", headers=world["a"]).get_json()
    assert "tenant" not in public and public["result"] == {"doubled": 42}
    assert "tenant" not in app.client.get(f"/functions/{fn['function_id']}", headers=world["a"]).get_json()


def test_the_owner_still_can_do_everything(world):
    """The same matrix as the owner: the routes work, so B's 404s are isolation, not breakage."""
    app, a = world["app"], world["a"]
    client = app.client
    doc = client.get("/openapi.json", headers=a).get_json()
    fn_id = world["fn"]["function_id"]
    # After the DELETE (204) the function's own routes, its schedules' included, are 404.
    expected = [200, 200, 200, 200, 200, 200, 200, 200, 200, 204, 200, 204, 200, 200, 204, 404, 404, 404, 200, 200,
                409, 200, 404, 404, 404, 404, 404, 404, 200]
    requests = b_requests(fn_id, world["done"], world["queued"], world["schedule"])[:len(expected)]  # not the endless stream
    for (method, path, kwargs), status in zip(requests, expected, strict=True):
        response = client.open(path, method=method, headers=a, **kwargs)
        assert response.status_code == status, (method, path, response.get_json())
        conforms(doc, method, path, response)


def test_no_tenant_can_be_named_after_the_code_stores_layers_prefix(world):
    with pytest.raises(ValueError, match="reserved"):
        world["app"].keys.create("layers")
