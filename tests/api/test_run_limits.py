"""Per-function and per-run limits through the API: validation, storage, and what the run gets.

Like tests/api, through Flask's test client on embedded storage with the process sandbox, the run
executed in-process by the worker's own code path (execute.run).
"""

from __future__ import annotations

import io
import json


from nanogrid.worker import execute

LIMIT_NAMES = {"timeout_s", "memory_mb", "cpus", "pids", "open_files", "file_size_mb", "tmpfs_mb", "output_bytes"}
SLEEPER = "import time\ntime.sleep(30)\n"
TALKER = "print('x' * 50000)\n"


def deploy(api, name, code="def handler(e, c):\n    return 1\n", **extra):
    response = api.post("/functions", json={"name": name, "code": code, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def refused(response, needle):
    body = response.get_json()
    assert response.status_code == 400, body
    assert needle in body["error"]["message"], body
    return body


def run(api, services, function_id, **body):
    response = api.post(f"/functions/{function_id}/run", json={"wait_s": 0, **body})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    execute.run(services, job_id)
    return services.jobs.get(job_id), api.get(f"/jobs/{job_id}").get_json()


def test_the_function_document_shows_the_effective_limits(api, services):
    defaults = {name: limit["default"] for name, limit in api.get("/limits").get_json().items()}
    assert set(defaults) == LIMIT_NAMES
    plain = deploy(api, "plain")
    assert plain["limits"] == defaults and plain["timeout_s"] is None and plain["memory_mb"] is None
    small = deploy(api, "small", limits={"memory_mb": 64, "pids": 16, "cpus": 0.5}, timeout_s=5)
    assert small["limits"] == {**defaults, "memory_mb": 64, "pids": 16, "cpus": 0.5, "timeout_s": 5}
    assert (small["timeout_s"], small["memory_mb"]) == (5, 64)  # the top-level fields of the API contract
    assert api.get(f"/functions/{small['function_id']}").get_json() == small


def test_bad_limits_are_refused_with_a_clear_message(api):
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


def test_limits_in_a_multipart_upload(api):
    response = api.post("/functions", data={"name": "mp", "file": (io.BytesIO(b"x = 1\n"), "main.py"),
                                            "limits": json.dumps({"tmpfs_mb": 8}), "memory_mb": "96"},
                        content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    assert (response.get_json()["limits"]["tmpfs_mb"], response.get_json()["memory_mb"]) == (8, 96)


def test_updates_replace_the_limits_or_change_one(api):
    fn = deploy(api, "upd", limits={"pids": 16, "memory_mb": 64})
    one = api.put(f"/functions/{fn['function_id']}", json={"timeout_s": 7}).get_json()
    assert (one["version"], one["timeout_s"], one["limits"]["pids"], one["memory_mb"]) == (2, 7, 16, 64)
    replaced = api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 0.25}}).get_json()
    assert replaced["version"] == 3 and replaced["limits"]["cpus"] == 0.25
    assert replaced["limits"]["pids"] == 128 and replaced["timeout_s"] is None and replaced["memory_mb"] is None
    same = api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 0.25}}).get_json()
    assert same["version"] == 3
    refused(api.put(f"/functions/{fn['function_id']}", json={"limits": {"cpus": 64}}), "cpus may be at most")


def test_a_run_may_change_the_limits_for_itself(api, services):
    fn = deploy(api, "sleeper", SLEEPER, limits={"timeout_s": 20, "pids": 32})
    record, job = run(api, services, fn["function_id"], limits={"timeout_s": 1})
    assert record["spec"]["limits"] == {"timeout_s": 1, "pids": 32}
    assert job["status"] == "FAILED" and job["error"]["type"] == "timeout" and "1 s" in job["error"]["message"]
    talker = deploy(api, "talker", TALKER)
    _, job = run(api, services, talker["function_id"], limits={"output_bytes": 4096})
    assert job["error"]["type"] == "output_limit" and job["truncated"] is True and len(job["stdout"]) <= 4096
    _, job = run(api, services, talker["function_id"])
    assert job["status"] == "SUCCESS" and len(job["stdout"]) == 50001


def test_a_run_over_the_ceiling_is_refused_and_not_queued(api, services):
    fn = deploy(api, "greedy")
    run_url = f"/functions/{fn['function_id']}/run"
    refused(api.post(run_url, json={"limits": {"memory_mb": 10**5}}), "memory_mb may be at most 4096")
    refused(api.post(run_url, json={"limits": {"output_bytes": -1}}), "at least")
    refused(api.post(run_url, json={"limits": "lots"}), "must be an object")
    assert services.jobs.table.scan() == []


def test_older_function_documents_keep_their_limits(api, services):
    """Functions stored before `limits` existed have only the top-level timeout_s / memory_mb."""
    fn = deploy(api, "legacy", SLEEPER)
    doc = services.functions.get(fn["function_id"])
    legacy = {k: v for k, v in doc.items() if k != "limits"}
    legacy.update(timeout_s=1, rev=doc["rev"] + 1)
    assert services.functions.table.replace(fn["function_id"], legacy, doc["rev"])
    assert api.get(f"/functions/{fn['function_id']}").get_json()["limits"]["timeout_s"] == 1
    record, job = run(api, services, fn["function_id"])
    assert record["spec"]["limits"] == {"timeout_s": 1} and job["error"]["type"] == "timeout"


def test_the_job_reports_peak_memory_and_cpu_time(api, services):
    fn = deploy(api, "burner", "x = bytearray(32 * 1024 * 1024)\nsum(range(2_000_000))\n")
    _, job = run(api, services, fn["function_id"])
    assert job["status"] == "SUCCESS", job
    assert job["peak_memory_bytes"] > 32 * 1024 * 1024 and job["cpu_time_ms"] > 0
