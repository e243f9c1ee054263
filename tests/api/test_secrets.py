"""Secrets through the API (Flask's test client, the embedded store, runs in the process sandbox):
values go in and never come out of the API; a run reads them as files only; its output shows a
value redacted; another tenant can neither read, list nor use them; no key, no store."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

VALUE = "hunter2-correct-horse"
READS = '''
import json, os, stat

def handler(event, context):
    path = os.path.join(os.environ["NANOGRID_SECRETS_DIR"], "DB_PASSWORD")
    value = open(path).read()
    print("the password is", value)
    return {"length": len(value), "mode": oct(stat.S_IMODE(os.stat(path).st_mode)),
            "in_environment": any(value in v for v in os.environ.values()), "echo": value}
'''


@pytest.fixture
def app(make_app):
    return make_app(secrets_key=Fernet.generate_key().decode())


def test_a_secret_is_set_listed_and_deleted_and_its_value_never_comes_back(app):
    api = app.client
    put = api.put("/secrets/DB_PASSWORD", json={"value": VALUE})
    assert put.status_code == 200 and set(put.get_json()) == {"name", "created_at", "updated_at"}
    again = api.put("/secrets/DB_PASSWORD", json={"value": VALUE + "!"}).get_json()
    assert again["created_at"] == put.get_json()["created_at"]
    assert [s["name"] for s in api.get("/secrets").get_json()["secrets"]] == ["DB_PASSWORD"]
    shown = [api.get("/secrets").get_data(as_text=True), api.get("/secrets/DB_PASSWORD").get_data(as_text=True)]
    assert not any(VALUE in text for text in shown)
    stored = [d for d in app.services.functions.table.scan() if "secret_name" in d]
    assert len(stored) == 1 and VALUE not in json.dumps(stored)  # encrypted at rest
    assert api.delete("/secrets/DB_PASSWORD").status_code == 204
    assert api.get("/secrets/DB_PASSWORD").status_code == 404
    assert api.delete("/secrets/DB_PASSWORD").status_code == 404
    for bad in ("1ABC", "a-b", "x" * 129):
        assert api.put(f"/secrets/{bad}", json={"value": "v"}).status_code == 400
    assert api.put("/secrets/EMPTY", json={"value": ""}).status_code == 400


def test_a_run_reads_it_as_a_file_only_and_its_output_shows_it_redacted(app):
    app.client.put("/secrets/DB_PASSWORD", json={"value": VALUE})
    fn = app.deploy("reads", READS, secrets=["DB_PASSWORD"])
    assert fn["secrets"] == ["DB_PASSWORD"]
    job = app.run(fn["function_id"])
    assert job["status"] == "SUCCESS", job
    assert job["result"]["length"] == len(VALUE) and job["result"]["mode"] == "0o400"
    assert job["result"]["in_environment"] is False
    assert job["stdout"] == "the password is [secret DB_PASSWORD]\n"
    assert job["result"]["echo"] == "[secret DB_PASSWORD]"
    documents = [app.client.get(path).get_data(as_text=True) for path in (
        f"/functions/{fn['function_id']}", f"/jobs/{job['job_id']}", f"/functions/{fn['function_id']}/versions/1",
        "/jobs")]
    assert not any(VALUE in text for text in documents)
    assert VALUE not in json.dumps(app.services.jobs.get(job["job_id"]))


def test_an_unknown_secret_cannot_be_listed_by_a_function_and_one_deleted_later_fails_its_runs(app):
    refused = app.client.post("/functions", json={"name": "x", "code": READS, "secrets": ["NOPE"]})
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "unknown_secret"
    app.client.put("/secrets/DB_PASSWORD", json={"value": VALUE})
    fn = app.deploy("reads", READS, secrets=["DB_PASSWORD"])
    app.client.delete("/secrets/DB_PASSWORD")
    job = app.run(fn["function_id"])
    assert job["status"] == "FAILED" and job["error"]["type"] == "secret_unavailable", job


def test_another_tenant_can_neither_read_list_nor_use_a_secret(app):
    a, b = app.new_key("tenant-a"), app.new_key("tenant-b")
    assert app.client.put("/secrets/DB_PASSWORD", json={"value": VALUE}, headers=a).status_code == 200
    assert app.client.get("/secrets/DB_PASSWORD", headers=b).status_code == 404
    assert app.client.get("/secrets", headers=b).get_json() == {"secrets": []}
    assert app.client.delete("/secrets/DB_PASSWORD", headers=b).status_code == 404
    used = app.client.post("/functions", json={"name": "steal", "code": READS, "secrets": ["DB_PASSWORD"]},
                           headers=b)
    assert used.status_code == 404 and used.get_json()["error"]["code"] == "unknown_secret"
    assert app.client.get("/secrets/DB_PASSWORD", headers=a).status_code == 200


def test_without_a_key_the_embedded_store_refuses_instead_of_keeping_values_in_the_clear(make_app):
    app = make_app(secrets_key="")
    response = app.client.put("/secrets/DB_PASSWORD", json={"value": VALUE})
    assert response.status_code == 503 and "NANOGRID_SECRETS_KEY" in response.get_json()["error"]["message"]
