"""API keys: open until a key exists, then a valid bearer key on every route but /health; keys stored
hashed, compared in constant time, never logged; `nanogrid keys create|list|revoke` as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from openapi_check import conforms

from nanogrid import keys
from nanogrid.config import Settings
from support.app import App

GUARDED = [("GET", "/functions"), ("GET", "/limits"), ("GET", "/openapi.json"), ("POST", "/functions"),
           ("GET", "/functions/fn-0123456789abcdef"), ("PUT", "/functions/fn-0123456789abcdef"),
           ("DELETE", "/functions/fn-0123456789abcdef"), ("POST", "/functions/fn-0123456789abcdef/run"),
           ("GET", "/jobs/00000000-0000-4000-8000-000000000000"),
           ("POST", "/jobs/00000000-0000-4000-8000-000000000000/cancel"), ("GET", "/no/such/route")]
BAD_TOKENS = [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token ng_0123456789abcdef_" + "A" * 43,
    "Bearer not-a-key", "Bearer ng_0123456789abcdef_" + "A" * 43, "Bearer ng_0123456789abcdef_short",
]


def unauthorized(response) -> None:
    body = response.get_json()
    assert response.status_code == 401, (response.status_code, body)
    assert body["error"]["code"] == "unauthorized" and set(body) == {"error"}, body
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_open_without_keys_closed_with_one(make_app):
    app = make_app()
    client = app.client
    assert client.get("/functions").status_code == 200  # no key exists: open, tenant "default"
    created = client.post("/functions", json={"name": "open-fn", "code": "x = 1\n"})
    assert created.status_code == 201
    assert app.services.functions.get(created.get_json()["function_id"])["tenant"] == keys.DEFAULT_TENANT

    key, _ = app.keys.create("acme")
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {key}"}).get_json()
    for method, path in GUARDED:
        for token in BAD_TOKENS:
            headers = {"Authorization": token} if token is not None else {}
            response = client.open(path, method=method, headers=headers)
            unauthorized(response)
            if path != "/no/such/route":
                conforms(doc, method, path, response)
    assert client.get("/health/live").status_code == 200  # the load balancer's probe needs no key
    assert client.get("/health").status_code == 503  # nor the readiness probe (503: no worker here)
    assert client.get("/metrics").status_code == 401  # a scraper does
    assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    ok = client.get("/functions", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.get_json() == {"functions": []}  # acme sees nothing of "default"
    assert client.get("/functions", headers={"Authorization": f"bearer   {key}  "}).status_code == 200


def test_keys_are_stored_hashed_and_revocation_keeps_the_api_closed(make_app):
    app = make_app()
    key, _ = app.keys.create("acme", "ci runner")
    key_id, secret = keys.KEY_PATTERN.match(key).groups()
    stored = app.keys.table.get(key_id)
    assert stored["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(stored) and key not in json.dumps(stored)
    assert set(keys.public(stored)) == {"key_id", "tenant", "label", "created_at", "revoked_at"}
    # A wrong secret with a real key id is refused like an unknown key.
    forged = f"ng_{key_id}_{'A' * 43}"
    unauthorized(app.client.get("/limits", headers={"Authorization": f"Bearer {forged}"}))
    assert app.client.get("/limits", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    app.keys.revoke(key_id)
    unauthorized(app.client.get("/limits", headers={"Authorization": f"Bearer {key}"}))
    # The only key is revoked, and still the API does not fall open.
    unauthorized(app.client.get("/limits"))
    fresh = App(app.settings).client  # another process's view
    unauthorized(fresh.get("/limits"))
    assert fresh.get("/health/live").status_code == 200


def test_a_running_api_closes_within_seconds_of_the_first_key(make_app, monkeypatch):
    monkeypatch.setattr(keys, "NO_KEYS_CACHE_S", 0.2)
    app = make_app()
    assert app.client.get("/limits").status_code == 200
    other = keys.KeyStore(app.keys.table)  # `nanogrid keys create` in another process
    key, _ = other.create("acme")
    time.sleep(0.3)
    unauthorized(app.client.get("/limits"))
    assert app.client.get("/limits", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_api_keys_never_reach_the_logs(make_app, caplog):
    app = make_app()
    key, _ = app.keys.create("acme")
    forged = keys.KEY_PATTERN.match(key).group(1)
    bad = f"ng_{forged}_{'B' * 43}"
    with caplog.at_level(logging.DEBUG):
        app.client.get("/functions", headers={"Authorization": f"Bearer {key}"})
        app.client.get("/functions", headers={"Authorization": f"Bearer {bad}"})
        app.client.get("/functions", headers={"Authorization": "Bearer ng_" + "C" * 60})
        app.client.post("/functions", json={"name": "x", "code": "def ("}, headers={"Authorization": f"Bearer {key}"})
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "refused" in text  # the failures are logged ...
    for secret in (key, key.split("_", 2)[2], "B" * 43, "C" * 40):
        assert secret not in text  # ... without any part of a secret


# -- `nanogrid keys` ---------------------------------------------------------------------------

def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanogrid.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def cli_env(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGRID_")}
    env.update(NANOGRID_DATA_DIR=str(tmp_path / "data"), NANOGRID_STORAGE="local", NANOGRID_REDIS_URL=redis_url,
               NANOGRID_SANDBOX="process", PYTHONPATH=os.pathsep.join(sys.path))
    return env


def test_keys_cli_create_list_revoke(cli_env):
    empty = cli(cli_env, "list")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == (f"no API keys in the local store in {cli_env['NANOGRID_DATA_DIR']}: an API using it "
                                    "is open (every request acts for the tenant 'default')")

    created = cli(cli_env, "create", "--tenant", "acme", "--label", "ci runner")
    assert created.returncode == 0, created.stderr
    assert created.stdout.endswith("\n") and created.stdout.count("\n") == 1  # the key, alone on stdout
    key = created.stdout.strip()
    match = keys.KEY_PATTERN.match(key)
    assert match, created.stdout
    key_id, secret = match.groups()
    assert key_id in created.stderr and secret not in created.stderr
    assert f"in the local store in {cli_env['NANOGRID_DATA_DIR']}" in created.stderr  # which store it wrote
    assert "This is the first key" in created.stderr and "tenant 'default'" in created.stderr

    listing = cli(cli_env, "list")
    assert listing.returncode == 0 and key_id in listing.stdout and "acme" in listing.stdout
    assert "active" in listing.stdout and "ci runner" in listing.stdout and secret not in listing.stdout
    [entry] = json.loads(cli(cli_env, "list", "--json").stdout)
    assert entry["key_id"] == key_id and entry["tenant"] == "acme" and entry["revoked_at"] is None
    assert "secret_sha256" not in entry

    # The key works against an API on the same store, and stops working once revoked.
    settings = Settings.from_env(cli_env)
    api = App(settings).client
    assert api.get("/functions", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    unauthorized(api.get("/functions"))

    revoked = cli(cli_env, "revoke", key)  # the whole key works too: only its id is used
    assert revoked.returncode == 0 and key_id in revoked.stdout, revoked.stderr
    assert "revoked" in cli(cli_env, "list").stdout
    fresh = App(settings).client
    unauthorized(fresh.get("/functions", headers={"Authorization": f"Bearer {key}"}))


def test_keys_cli_refuses_to_guess_the_installation(cli_env):
    """Without the installation's environment the keys would land in a store no API may use."""
    bare = {k: v for k, v in cli_env.items() if k not in ("NANOGRID_DATA_DIR", "NANOGRID_STORAGE")}
    for command in (["create", "--tenant", "acme"], ["list"], ["revoke", "0123456789abcdef"]):
        refused = cli(bare, *command)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith("error: which installation?") and refused.stderr.count("\n") == 1
        assert refused.stdout == ""

    assert cli(cli_env, "revoke", "0000000000000000").returncode == 1
    bad = cli(cli_env, "create", "--tenant", "no:colons")
    assert bad.returncode == 2 and bad.stdout == "" and "tenant" in bad.stderr
    assert cli(cli_env, "create").returncode == 2  # --tenant is required


def test_the_key_store_on_dynamodb(moto_server, tmp_path):
    """NANOGRID_STORAGE=aws: the keys table is provisioned like the others and behaves the same."""
    from nanogrid import storage
    from nanogrid.storage.provision import ensure_resources

    settings = Settings.from_env({"NANOGRID_STORAGE": "aws", "AWS_ENDPOINT_URL": moto_server,
                                  "AWS_REGION": "ap-northeast-2", "NANOGRID_ARCHIVE": "none",
                                  "NANOGRID_KEYS_TABLE": f"keys-{tmp_path.name}"[:200]})
    ensure_resources(settings)
    store = keys.KeyStore(storage.key_table(settings))
    assert not store.any_keys()
    key, doc = store.create("acme")
    assert keys.KeyStore(storage.key_table(settings)).any_keys()  # another process sees it
    assert store.verify(key) == keys.Principal("acme", doc["key_id"])
    store.revoke(doc["key_id"])
    assert keys.KeyStore(storage.key_table(settings)).verify(key) is None
    assert [d["key_id"] for d in store.list()] == [doc["key_id"]]
