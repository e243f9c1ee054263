"""A function's lifecycle through HTTP, on the dev stack and on the production stack (SQS, S3,
DynamoDB, Docker sandboxes): versions listed and run, an alias run, moved and split 90/10 over
200 runs, the function deleted with its versions and aliases; and max_concurrency 1 holding four
concurrent runs to one at a time while another function's runs go on."""

from __future__ import annotations

import concurrent.futures
import math
from datetime import datetime

import pytest
import requests

from support.stack import Stack

RETURNS = "def handler(event, context):\n    return {n!r}\n"
SLOW = "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return event['i']\n"
STACKS = [
    pytest.param("dev", marks=pytest.mark.processes),
    pytest.param("production", marks=[pytest.mark.aws, pytest.mark.docker, pytest.mark.gcs, pytest.mark.processes,
                                      pytest.mark.redis]),
]


@pytest.fixture(scope="module")
def production(processes, tmp_path_factory, moto_server, gcs_emulator, redis_url, runtime_image):
    stack = Stack.production(processes, tmp_path_factory.mktemp("lifecycle"), moto_server=moto_server,
                             gcs_emulator=gcs_emulator, redis_url=redis_url, runtime_image=runtime_image,
                             env={"NANOGRID_RATE_LIMIT": "off"})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("lifecycle-dev"), env={"NANOGRID_RATE_LIMIT": "off"})
    yield stack
    stack.stop()


def call(stack: Stack, method: str, path: str, **body) -> requests.Response:
    return requests.request(method, stack.url + path, json=body or None, timeout=120)


def run(stack: Stack, function_id: str, **body) -> dict:
    response = call(stack, "POST", f"/functions/{function_id}/run", wait_s=60, **body)
    assert response.status_code in (200, 202), response.text
    return response.json()


@pytest.mark.parametrize("shape", STACKS)
def test_versions_and_aliases_run_move_split_and_go_with_the_function(request, shape):
    stack = request.getfixturevalue(shape)
    created = call(stack, "POST", "/functions", name=f"life-{shape}", code=RETURNS.format(n="v1")).json()
    function_id = created["function_id"]
    assert call(stack, "PUT", f"/functions/{function_id}", code=RETURNS.format(n="v2")).json()["version"] == 2
    assert [v["version"] for v in call(stack, "GET", f"/functions/{function_id}/versions").json()["versions"]] == [2, 1]

    assert run(stack, function_id)["result"] == "v2"
    old = run(stack, function_id, version=1)
    assert old["status"] == "SUCCESS" and old["result"] == "v1" and old["function_version"] == 1, old

    assert call(stack, "PUT", f"/functions/{function_id}/aliases/prod", version=1).status_code == 200
    through = run(stack, function_id, alias="prod")
    assert (through["result"], through["alias"], through["function_version"]) == ("v1", "prod", 1), through
    call(stack, "PUT", f"/functions/{function_id}/aliases/prod", version=2)
    assert run(stack, function_id, alias="prod")["result"] == "v2"

    call(stack, "PUT", f"/functions/{function_id}/aliases/canary", version=2, weights={"1": 0.1})
    queued = [call(stack, "POST", f"/functions/{function_id}/run", alias="canary", wait_s=0).json()
              for _ in range(200)]
    to_one = [job["function_version"] for job in queued].count(1)
    # 200 draws at p = 0.1: mean 20, standard deviation 4.24; 5 of them either side.
    assert abs(to_one - 20) <= 5 * math.sqrt(200 * 0.1 * 0.9), to_one
    last = call(stack, "GET", f"/jobs/{queued[-1]['job_id']}?wait_s=60").json()
    assert last["status"] == "SUCCESS" and last["result"] == f"v{last['function_version']}", last

    assert call(stack, "DELETE", f"/functions/{function_id}").status_code == 204
    for path in ("/versions", "/versions/1", "/aliases/prod", "/aliases"):
        assert call(stack, "GET", f"/functions/{function_id}{path}").status_code == 404, path


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("shape", STACKS)
def test_max_concurrency_one_runs_four_one_at_a_time_while_another_function_goes_on(request, shape):
    stack = request.getfixturevalue(shape)
    bounded = call(stack, "POST", "/functions", name=f"one-at-a-time-{shape}", code=SLOW, max_concurrency=1).json()
    other = call(stack, "POST", "/functions", name=f"free-{shape}", code=SLOW).json()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        four = [pool.submit(run, stack, bounded["function_id"], input={"i": i}) for i in range(4)]
        others = [pool.submit(run, stack, other["function_id"], input={"i": i}) for i in range(2)]
        jobs = [f.result() for f in four]
        free = [f.result() for f in others]
    assert all(job["status"] == "SUCCESS" for job in jobs + free), jobs + free
    spans = sorted((when(job["started_at"]), when(job["finished_at"])) for job in jobs)
    for (_, finished), (started, _) in zip(spans, spans[1:]):
        assert started >= finished, spans  # never two at once
    # The other function's runs were not held behind the bound: both ended before the fourth began.
    assert max(when(job["finished_at"]) for job in free) < spans[-1][0], (spans, free)
