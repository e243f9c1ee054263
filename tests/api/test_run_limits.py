"""Per-function and per-run limits through the API: validation, storage, and what the run gets.

Like test_api.py, through Flask's test client on embedded storage with the process sandbox, the run
executed in-process by the worker's own code path (execute.run).
"""

from __future__ import annotations

import io
import json

LIMIT_NAMES = {"timeout_s", "memory_mb", "cpus", "pids", "open_files", "file_size_mb", "tmpfs_mb", "output_bytes",
               "init_timeout_s"}
SLEEPER = "import time\ntime.sleep(30)\n"
TALKER = "print('x' * 50000)\n"
RETURNS_ONE = "def handler(e, c):\n    return 1\n"


def refused(response, needle):
    body = response.get_json()
    assert response.status_code == 400, body
    assert needle in body["error"]["message"], body
    return body


def test_the_function_document_shows_the_effective_limits(app):
    defaults = {name: limit["default"] for name, limit in app.client.get("/limits").get_json().items()}
    assert set(defaults) == LIMIT_NAMES and defaults["init_timeout_s"] == 60
    plain = app.deploy("plain", RETURNS_ONE)
    assert plain["limits"] == defaults and plain["timeout_s"] is None and plain["memory_mb"] is None
    small = app.deploy("small", RETURNS_ONE, limits={"memory_mb": 64, "pids": 16, "cpus": 0.5}, timeout_s=5)
    assert small["limits"] == {**defaults, "memory_mb": 64, "pids": 16, "cpus": 0.5, "timeout_s": 5}
    assert (small["timeout_s"], small["memory_mb"]) == (5, 64)  # the top-level fields of the API contract
    assert app.client.get(f"/functions/{small['function_id']}").get_json() == small


def test_bad_limits_are_refused_with_a_clear_message(app):
    api = app.client
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "limits": {"pids": 10**6}}),
            "pids may be at most 1024")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "limits": {"gpus": 1}}), "unknown limit(s): gpus")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "limits": {"memory_mb": 2}}),
            "memory_mb must be at least 16")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "limits": {"pids": 2.5}}), "whole number")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "limits": [64]}), "must be an object")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "timeout_s": 5, "limits": {"timeout_s": 6}}),
            "timeout_s given both")
    refused(api.post("/functions", json={"name": "a", "code": "x=1", "timeout_s": 10**9}), "timeout_s may be at most")
    assert api.get("/functions").get_json()["functions"] == []


def test_limits_in_a_multipart_upload(app):
    response = app.client.post("/functions", data={"name": "mp", "file": (io.BytesIO(b"x = 1\n"), "main.py"),
                                                   "limits": json.dumps({"tmpfs_mb": 8}), "memory_mb": "96"},
                               content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["limits"]["tmpfs_mb"], response.get_json()["memory_mb"]) == (8, 96)


def test_updates_replace_the_limits_or_change_one(app):
    api = app.client
    fn = app.deploy("upd", RETURNS_ONE, limits={"pids": 16, "memory_mb": 64})
    one = api.put(f"/functions/{fn['function_id']}", json={"timeout_s": 7}).get_json()
    assert (one["version"], one["timeout_s"], one["limits"]["pids"], one["memory_mb"]) == (2, 7, 16, 64)
    replaced = api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 0.25}}).get_json()
    assert replaced["version"] == 3 and replaced["limits"]["cpus"] == 0.25
    assert replaced["limits"]["pids"] == 128 and replaced["timeout_s"] is None and replaced["memory_mb"] is None
    same = api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 0.25}}).get_json()
    assert same["version"] == 3
    refused(api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 64}}), "cpus may be at most")


def test_a_run_may_change_the_limits_for_itself(app):
    fn = app.deploy("sleeper", SLEEPER, limits={"timeout_s": 20, "pids": 32})
    job = app.run(fn["function_id"], limits={"timeout_s": 1})
    assert app.services.jobs.get(job["job_id"])["spec"]["limits"] == {"timeout_s": 1, "pids": 32}
    assert job["status"] == "FAILED" and job["error"]["type"] == "timeout" and "1 s" in job["error"]["message"]
    talker = app.deploy("talker", TALKER)
    job = app.run(talker["function_id"], limits={"output_bytes": 4096})
    assert job["error"]["type"] == "output_limit" and job["truncated"] is True and len(job["stdout"]) <= 4096
    job = app.run(talker["function_id"])
    assert job["status"] == "SUCCESS" and len(job["stdout"]) == 50001


def test_a_run_over_the_ceiling_is_refused_and_not_queued(app):
    api = app.client
    fn = app.deploy("greedy", RETURNS_ONE)
    run_url = f"/functions/{fn['function_id']}/run"
    refused(api.post(run_url, json={"limits": {"memory_mb": 10**5}}), "memory_mb may be at most 4096")
    refused(api.post(run_url, json={"limits": {"output_bytes": -1}}), "at least")
    refused(api.post(run_url, json={"limits": "lots"}), "must be an object")
    assert app.services.jobs.table.scan() == []


def test_older_function_documents_keep_their_limits(app):
    """Functions stored before `limits` existed have only the top-level timeout_s / memory_mb (and
    no version documents either)."""
    fn = app.deploy("legacy", SLEEPER)
    doc = app.services.functions.get(fn["function_id"])
    legacy = {k: v for k, v in doc.items() if k not in ("limits", "kept_versions", "aliases")}
    legacy.update(timeout_s=1, rev=doc["rev"] + 1)
    assert app.services.functions.table.replace(fn["function_id"], legacy, doc["rev"])
    assert app.client.get(f"/functions/{fn['function_id']}").get_json()["limits"]["timeout_s"] == 1
    job = app.run(fn["function_id"])
    assert app.services.jobs.get(job["job_id"])["spec"]["limits"] == {"timeout_s": 1}
    assert job["error"]["type"] == "timeout"


def test_the_job_reports_peak_memory_and_cpu_time(app):
    fn = app.deploy("burner", "x = bytearray(32 * 1024 * 1024)\nsum(range(2_000_000))\n")
    job = app.run(fn["function_id"])
    assert job["status"] == "SUCCESS", job
    assert job["peak_memory_bytes"] > 32 * 1024 * 1024 and job["cpu_time_ms"] > 0
