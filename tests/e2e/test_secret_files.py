"""Secrets through HTTP on the dev stack (Docker sandboxes, the embedded encrypted store) and the
production stack (Secrets Manager on moto): a run reads the value only as a file under
/run/secrets, 0400 and its own user's; not in its environment; the value in no document, no log
line of the API or the worker and no metric; another tenant can neither read, list nor use it."""

from __future__ import annotations

import pytest
import requests

from support.stack import Stack

VALUE = "s3cr3t-value-for-the-test-91a7"
READS = '''
import os, stat

def handler(event, context):
    path = "/run/secrets/DB_PASSWORD"
    st = os.stat(path)
    value = open(path).read()
    print("printing it:", value)
    return {"matches": len(value) == event["expect_length"],
            "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "my_uid": os.getuid(),
            "in_environment": any(value in v for v in os.environ.values()),
            "listed": sorted(os.listdir("/run/secrets"))}
'''
STACKS = [
    pytest.param("dev", marks=[pytest.mark.processes, pytest.mark.docker]),
    pytest.param("production", marks=[pytest.mark.aws, pytest.mark.docker, pytest.mark.gcs, pytest.mark.processes,
                                      pytest.mark.redis]),
]


def keyed(stack: Stack) -> Stack:
    """Two tenants' keys on the stack (from `nanogrid keys create`, as an operator makes them)."""
    stack.keys = {}
    for tenant in ("tenant-a", "tenant-b"):
        created = stack.cli("keys", "create", "--tenant", tenant)
        assert created.returncode == 0, created.stderr
        stack.keys[tenant] = {"Authorization": f"Bearer {created.stdout.strip()}"}
    return stack


@pytest.fixture(scope="module")
def dev(processes, tmp_path_factory, runtime_image):
    stack = Stack.dev(processes, tmp_path_factory.mktemp("secrets-dev"), runtime_image=runtime_image)
    yield keyed(stack)
    stack.stop()


@pytest.fixture(scope="module")
def production(processes, tmp_path_factory, moto_server, gcs_emulator, redis_url, runtime_image):
    stack = Stack.production(processes, tmp_path_factory.mktemp("secrets"), moto_server=moto_server,
                             gcs_emulator=gcs_emulator, redis_url=redis_url, runtime_image=runtime_image,
                             env={"NANOGRID_SECRETS_PREFIX": "nanogrid-test/"})
    yield keyed(stack)
    stack.stop()


def call(stack: Stack, tenant: str, method: str, path: str, **body) -> requests.Response:
    return requests.request(method, stack.url + path, json=body or None, headers=stack.keys[tenant], timeout=120)


@pytest.mark.parametrize("shape", STACKS)
def test_a_secret_is_a_file_of_the_run_only_and_shown_nowhere(request, shape):
    stack = request.getfixturevalue(shape)
    assert call(stack, "tenant-a", "PUT", "/secrets/DB_PASSWORD", value=VALUE).status_code == 200
    created = call(stack, "tenant-a", "POST", "/functions", name="reads", code=READS, secrets=["DB_PASSWORD"])
    assert created.status_code == 201, created.text
    function_id = created.json()["function_id"]
    job = call(stack, "tenant-a", "POST", f"/functions/{function_id}/run", input={"expect_length": len(VALUE)},
               wait_s=60).json()
    assert job["status"] == "SUCCESS", job
    result = job["result"]
    assert result["matches"] and result["listed"] == ["DB_PASSWORD"], result
    assert result["mode"] == "0o400" and result["uid"] == result["my_uid"] == 65534, result
    assert result["in_environment"] is False
    assert job["stdout"] == "printing it: [secret DB_PASSWORD]\n", job["stdout"]

    shown = [call(stack, "tenant-a", "GET", path).text for path in (
        "/secrets", "/secrets/DB_PASSWORD", "/functions", f"/functions/{function_id}",
        f"/functions/{function_id}/versions/1", f"/jobs/{job['job_id']}", "/jobs")]
    shown += [requests.get(url, timeout=30).text for url in (stack.url + "/metrics", stack.metrics_url)]
    shown += [stack.log(name) for name in stack.procs]  # the API's and the worker's own log lines
    assert all(VALUE not in text for text in shown)

    # Tenant B: not readable, not listed, not usable.
    assert call(stack, "tenant-b", "GET", "/secrets/DB_PASSWORD").status_code == 404
    assert call(stack, "tenant-b", "GET", "/secrets").json() == {"secrets": []}
    used = call(stack, "tenant-b", "POST", "/functions", name="steals", code=READS, secrets=["DB_PASSWORD"])
    assert used.status_code == 404 and used.json()["error"]["code"] == "unknown_secret", used.text
    assert call(stack, "tenant-b", "DELETE", "/secrets/DB_PASSWORD").status_code == 404
    assert call(stack, "tenant-a", "GET", "/secrets/DB_PASSWORD").status_code == 200
