"""The API contract through Flask's test client (support.app), on embedded storage and a real Redis.

Runs are executed in-process (execute.run, the worker's own code path) with the process sandbox,
so these tests cover the API, job records and the run pipeline without a broker round trip; the
end-to-end tests cover the real worker processes.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile

import pytest
import redis

from nanogrid.worker import execute

HANDLER = "def handler(event, context):\n    print('hi', event)\n    return {'sum': event['a'] + event['b']}\n"
SCRIPT = "import json, sys\ndata = json.load(sys.stdin)\nprint('hello', data['name'])\n"


def test_handler_function_runs_and_returns_its_result(app):
    fn = app.deploy("adder", HANDLER)
    assert fn["handler"] == "handler" and fn["version"] == 1 and len(fn["code_sha256"]) == 64
    job = app.run(fn["function_id"], {"a": 2, "b": 3})
    assert job["status"] == "SUCCESS", job
    assert job["result"] == {"sum": 5}
    assert job["stdout"] == "hi {'a': 2, 'b': 3}\n"
    assert job["error"] is None and job["exit_code"] == 0
    assert set(job) >= {"job_id", "function_id", "function_version", "duration_ms", "created_at", "started_at",
                        "finished_at"}


def test_script_function_reads_input_on_stdin(app):
    fn = app.deploy("script", SCRIPT)
    assert fn["handler"] is None
    job = app.run(fn["function_id"], {"name": "you"})
    assert (job["status"], job["stdout"], job["result"]) == ("SUCCESS", "hello you\n", None)


@pytest.mark.parametrize("code, error_type, needle", [
    ("def handler(e, c):\n    raise ValueError('boom')\n", "runtime_error", "ValueError: boom"),
    ("import sys\nsys.exit(3)\n", "runtime_error", None),
    ("def handler(e, c):\n    return {1, 2}\n", "invalid_result", None),
    ("import nosuchmodule\n", "runtime_error", "ModuleNotFoundError"),
])
def test_failures_carry_their_error_type(app, code, error_type, needle):
    fn = app.deploy("bad", code)
    job = app.run(fn["function_id"], None)
    assert job["status"] == "FAILED"
    assert job["error"]["type"] == error_type, job
    if needle:
        assert needle in job["stderr"] and "Traceback" in job["stderr"]
        assert "runner.py" not in job["stderr"]


def test_timeout(app):
    fn = app.deploy("slow", "import time\ntime.sleep(30)\n", timeout_s=1)
    job = app.run(fn["function_id"], None)
    assert job["error"]["type"] == "timeout"


def test_large_output_spills_to_the_output_store(app):
    fn = app.deploy("big", "print('x' * 200000)\n")
    job = app.run(fn["function_id"], None)
    assert job["status"] == "SUCCESS" and len(job["stdout"]) == 200001
    assert app.services.jobs.get(job["job_id"])["output_ref"]


def test_new_version_does_not_change_a_queued_job(app):
    api = app.client
    fn = app.deploy("versions", "def handler(e, c):\n    return 1\n")
    response = api.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0})
    job_id = response.get_json()["job_id"]
    updated = api.put(f"/functions/{fn['function_id']}", json={"code": "def handler(e, c):\n    return 2\n"})
    assert updated.get_json()["version"] == 2
    execute.run(app.services, job_id)
    assert api.get(f"/jobs/{job_id}").get_json()["result"] == 1
    assert app.run(fn["function_id"], None)["result"] == 2


def test_function_crud(app):
    api = app.client
    fn = app.deploy("crud", HANDLER)
    assert api.get("/functions").get_json()["functions"][0]["name"] == "crud"
    assert api.get(f"/functions/{fn['function_id']}").get_json() == fn
    same = api.put(f"/functions/{fn['function_id']}", json={"code": HANDLER}).get_json()
    assert same["version"] == 1
    changed = api.put(f"/functions/{fn['function_id']}", json={"timeout_s": 5}).get_json()
    assert (changed["version"], changed["timeout_s"]) == (2, 5)
    assert api.post("/functions", json={"name": "crud", "code": HANDLER}).status_code == 409
    assert api.delete(f"/functions/{fn['function_id']}").status_code == 204
    assert api.get(f"/functions/{fn['function_id']}").status_code == 404
    assert api.post("/functions", json={"name": "crud", "code": HANDLER}).status_code == 201


def test_multipart_py_and_zip_uploads(app):
    api = app.client
    response = api.post("/functions", data={"name": "mp", "file": (io.BytesIO(HANDLER.encode()), "main.py")},
                        content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("main.py", "from lib.util import double\ndef handler(e, c):\n    return double(e)\n")
        z.writestr("lib/__init__.py", "")
        z.writestr("lib/util.py", "def double(x):\n    return 2 * x\n")
    response = api.post("/functions", data={"name": "zipped", "file": (io.BytesIO(buffer.getvalue()), "f.zip")},
                        content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    job = app.run(response.get_json()["function_id"], 21)
    assert job["result"] == 42, job


def error_of(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"]


def test_bad_input_gets_clear_json_errors(app):
    api = app.client
    fn = app.deploy("adder", HANDLER)
    run = f"/functions/{fn['function_id']}/run"
    assert error_of(api.post("/functions", data="{not json", content_type="application/json")) == (400, "invalid_json")
    deep = "[" * 100_000 + "]" * 100_000
    assert error_of(api.post(run, data=deep, content_type="application/json")) == (400, "invalid_json")
    assert error_of(api.post("/functions", data="name=x", content_type="text/plain"))[0] == 415
    big = json.dumps({"input": "x" * (300 * 1024)})
    assert error_of(api.post(run, data=big, content_type="application/json"))[0] == 413
    assert error_of(api.post("/functions", json={"name": "bad name!", "code": "x=1"}))[0] == 400
    assert error_of(api.post("/functions", json={"name": "-leading", "code": "x=1"}))[0] == 400
    assert error_of(api.post("/functions", json={"name": "x" * 65, "code": "x=1"}))[0] == 400
    assert error_of(api.post("/functions", json={"name": "syntax", "code": "def ("}))[0] == 400
    assert error_of(api.post("/functions", json={"name": "big", "code": "x=1", "timeout_s": 10**9}))[0] == 400
    assert error_of(api.post("/functions", json={"name": "x", "code": "x=1", "extra": 1}))[0] == 400
    assert error_of(api.get("/functions/fn-0000000000000000")) == (404, "not_found")
    assert error_of(api.get("/functions/../../etc/passwd"))[0] == 404
    assert error_of(api.get("/jobs/00000000-0000-4000-8000-000000000000")) == (404, "not_found")
    assert error_of(api.get("/jobs/not-a-job"))[0] == 404
    assert error_of(api.post("/functions/fn-0000000000000000/run", json={}))[0] == 404
    assert error_of(api.delete("/jobs/whatever"))[0] == 405
    assert error_of(api.post(run, json={"wait_s": -1}))[0] == 400
    assert api.get("/functions").get_json()["functions"] == [fn]


def zip_upload(api, name, members, symlink=None):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return api.post("/functions", data={"name": name, "file": (io.BytesIO(buffer.getvalue()), "code.zip")},
                    content_type="multipart/form-data")


def test_hostile_zips_are_refused(app):
    api = app.client
    assert error_of(zip_upload(api, "slip", {"main.py": "x=1", "../evil.py": "x=1"}))[0] == 400
    assert error_of(zip_upload(api, "abs", {"main.py": "x=1", "/etc/evil.py": "x=1"}))[0] == 400
    assert error_of(zip_upload(api, "link", {"main.py": "x=1"}, symlink="data"))[0] == 400
    assert error_of(zip_upload(api, "nomain", {"other.py": "x=1"}))[0] == 400
    assert error_of(zip_upload(api, "bomb", {"main.py": "x=1", "zeros.txt": b"\0" * (60 * 1024 * 1024)}))[0] == 413
    assert error_of(zip_upload(api, "latin1", {"main.py": "s = 'caf\xe9'".encode("latin-1")}))[0] == 400
    assert error_of(api.post("/functions", data={"name": "l1", "file": (io.BytesIO(b"s='\xe9'"), "m.py")},
                             content_type="multipart/form-data"))[0] == 400
    assert api.get("/functions").get_json()["functions"] == []


def test_health_and_limits(app):
    live = app.client.get("/health/live")
    assert live.status_code == 200, live.get_json()
    assert set(live.get_json()["components"]) == {"redis", "functions", "jobs", "broker"}
    health = app.client.get("/health")  # ready to run functions: no worker has beaten here
    assert health.status_code == 503 and health.get_json()["failing"] == ["worker"], health.get_json()
    components = health.get_json()["components"]
    assert components["worker"]["status"] == "down" and components["sandbox"]["status"] == "unknown"
    assert components["sandbox"]["isolated"] is False
    limits = app.client.get("/limits").get_json()
    assert limits["timeout_s"] == {"default": 30, "ceiling": 86400}


def test_cancel_a_queued_job(app):
    api = app.client
    fn = app.deploy("cancel-me", HANDLER)
    job_id = api.post(f"/functions/{fn['function_id']}/run", json={"wait_s": 0}).get_json()["job_id"]
    cancelled = api.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["error"] == {"type": "cancelled", "message": "cancelled by request"}
    assert execute.run(app.services, job_id) == "duplicate"
    assert api.get(f"/jobs/{job_id}").get_json()["status"] == "FAILED"
    assert error_of(api.post(f"/jobs/{job_id}/cancel")) == (409, "conflict")
    assert error_of(api.post("/jobs/00000000-0000-4000-8000-000000000000/cancel"))[0] == 404


def test_every_api_thread_waiting_at_once_gets_its_answer_on_a_bounded_redis_pool(app, redis_url):
    """A request thread waiting on a run holds a Redis subscription: as many waits as the API has
    threads all end with the result, on no more connections than the pool is sized to."""
    threads = app.settings.api_threads
    function_id = app.deploy("echo", "def handler(e, c):\n    return e\n")["function_id"]
    job_id = app.client.post(f"/functions/{function_id}/run", json={"input": 7, "wait_s": 0}).get_json()["job_id"]
    answers, started = [], threading.Barrier(threads + 1)

    def wait():
        started.wait()
        answers.append(app.client.get(f"/jobs/{job_id}", query_string={"wait_s": 60}).get_json())

    waiters = [threading.Thread(target=wait) for _ in range(threads)]
    for waiter in waiters:
        waiter.start()
    started.wait()
    execute.run(app.services, job_id)
    for waiter in waiters:
        waiter.join()
    assert [answer["status"] for answer in answers] == ["SUCCESS"] * threads
    assert [answer["result"] for answer in answers] == [7] * threads
    pool = app.services.redis.connection_pool
    assert pool.max_connections == 2 * threads + 8
    held = redis.Redis.from_url(redis_url).info("clients")["connected_clients"] - 1  # not this probe
    assert held <= pool.max_connections
