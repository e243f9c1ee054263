"""The OpenAPI 3.1 document at /openapi.json is the API's real contract.

schemathesis generates requests for every operation from the document (a bounded number of examples
each) and sends them to the app through its WSGI interface: no answer may be a 5xx or differ from
what the document promises (status, content type, headers, body schema), and data the document
rejects must be rejected. The app runs as the tests/api apps do: embedded storage, a real Redis and
its broker, the process sandbox and no worker, so runs stay PENDING; wait_s is bounded by a small
NANOGRID_MAX_WAIT_S, which the document states, so no generated request can wait long. A key exists,
so every guarded operation is also checked for refusing requests without it.
"""

from __future__ import annotations

import hypothesis
import pytest
from cryptography.fernet import Fernet
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from nanogrid.api import routes
from nanogrid.api import schema as api_schema
from nanogrid.config import RateLimit, Settings
from nanogrid.functions import ID_PATTERN, NAME_PATTERN
from nanogrid.jobs import is_job_id

MAX_EXAMPLES = 25
TARGET = "def handler(event, context):\n    return event\n"
CONFIG = {
    "generation": {"max-examples": MAX_EXAMPLES},
    "checks": {
        # The document cannot say "valid Python" or "a function that exists": schema-valid bodies
        # are still refused with 400 (syntax error) or 404, so acceptance of valid data is not checked.
        "positive_data_acceptance": {"enabled": False},
        # Data the document rejects must be refused; 413 is a refusal too (a too-large body).
        "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "409", "413", "415", "422", "429"]},
    },
}
HEALTH_PATHS = ("/health", "/health/live")  # open probes, answering 503 with the health document


# The bounds the fuzzed app runs with; the document depends on nothing else, so the schema is built
# from them at import (schemathesis parametrizes at collection) and checked to be what the app serves.
BOUNDS = {"max_wait_s": 0.5, "default_wait_s": 0.1, "max_stream_s": 1}  # an event stream closes within a second
schema = schemathesis.openapi.from_dict(api_schema.document(Settings().replace(**BOUNDS)),
                                        config=SchemathesisConfig.from_dict(CONFIG))


class CurrentApp:
    """The WSGI app schemathesis sends every request (and its checks' probes) to: the test's own app."""

    target = None

    def __call__(self, environ, start_response):
        return self.target(environ, start_response)


schema.app = CURRENT_APP = CurrentApp()


@pytest.fixture
def contract_app(make_app):
    app = make_app(rate_limit=RateLimit(0, 1), secrets_key=Fernet.generate_key().decode(), **BOUNDS)
    key, _ = app.keys.create("fuzz")
    app.auth = {"Authorization": f"Bearer {key}"}
    served = app.client.get("/openapi.json", headers=app.auth).get_json()
    assert served == schema.raw_schema, "the fuzzed document must be the one the app serves"
    # Something real for the generated ids to point at (see the test).
    created = app.client.post("/functions", json={"name": "fuzz-target", "code": TARGET}, headers=app.auth)
    app.function_id = created.get_json()["function_id"]
    run = app.client.post(f"/functions/{app.function_id}/run", json={"input": 1, "wait_s": 0}, headers=app.auth)
    app.job_id = run.get_json()["job_id"]
    CURRENT_APP.target = app.flask
    yield app
    CURRENT_APP.target = None


@schema.parametrize()
# derandomize: the same examples every run, so a failure is reproducible and never comes and goes.
@hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])  # one app per operation
@pytest.mark.timeout(120)
def test_the_api_keeps_its_documented_contract(case, contract_app):
    # Random well-formed ids would only ever meet 404: a well-formed one is replaced by an existing
    # function's or job's id (still well-formed, so the case stays what it was generated as), so the
    # runs, updates, reads and cancels themselves are exercised and their answers checked too.
    params = case.path_parameters or {}
    if ID_PATTERN.match(str(params.get("function_id", ""))):
        params["function_id"] = contract_app.function_id
    if is_job_id(str(params.get("job_id", ""))):
        params["job_id"] = contract_app.job_id
    # The app has no worker, so /health answers its documented 503; the document's other promises
    # about it (status, content type, body schema) are still checked.
    excluded = [not_a_server_error] if case.path in HEALTH_PATHS else []
    case.call_and_validate(headers=contract_app.auth, excluded_checks=excluded)


def test_the_document_describes_every_route_and_is_valid_openapi(contract_app):
    client = contract_app.client
    response = client.get("/openapi.json", headers=contract_app.auth)
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1")
    from openapi_spec_validator import validate

    validate(doc)
    rules = {(rule.rule.replace("<", "{").replace(">", "}"), method.lower())
             for rule in contract_app.flask.url_map.iter_rules()
             if rule.endpoint != "static" and not rule.endpoint.startswith("console.")  # pages, not the API
             for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item if method != "parameters"}
    assert rules == documented
    # Every 4xx/5xx answer is documented with the one error schema (the health probe's 503 excepted).
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op.get("security", doc["security"]) == ([] if path in HEALTH_PATHS else
                                                           [{"bearerAuth": []}]), (path, method)
            for status, answer in op["responses"].items():
                if status[0] in "45" and not (path in HEALTH_PATHS and status == "503"):
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (path, method, status)
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "an API key: ng_<key id>_<secret>"}
    # The installation's own bounds are in the document.
    run_request = doc["components"]["schemas"]["RunRequest"]
    assert run_request["properties"]["wait_s"]["maximum"] == 0.5
    assert doc["components"]["schemas"]["FunctionCreate"]["properties"]["name"]["pattern"] == NAME_PATTERN.pattern


def test_the_routes_validate_bodies_with_the_documents_schemas(contract_app):
    """A body the document rejects is refused even where the routes' own checks would let it by."""
    client, auth = contract_app.client, contract_app.auth
    created = client.post("/functions", json={"name": "ok", "code": "x = 1\n"}, headers=auth)
    assert created.status_code == 201
    fn = created.get_json()["function_id"]
    for body in ({"name": "a", "code": "x = 1\n", "limits": '{"pids": 16}'},  # limits as text is for forms only
                 {"name": "a", "code": "x = 1\n", "env": {"A": "1"}, "timeout_s": "5"},
                 {"name": "a", "code": "x = 1\n", "handler": 7}):
        response = client.post("/functions", json=body, headers=auth)
        assert response.status_code == 400, (body, response.get_json())
    for body in ({"wait_s": True}, {"wait_s": 0, "limits": {"pids": "16"}}, {"wait_s": 0.6}):
        response = client.post(f"/functions/{fn}/run", json=body, headers=auth)
        assert response.status_code == 400, (body, response.get_json())
    with pytest.raises(api_schema.SchemaError, match="Additional properties"):
        api_schema.check(contract_app.settings, "RunRequest", {"wait_s": 0, "surprise": 1})
    nested = 0
    for _ in range(routes.MAX_JSON_DEPTH + 1):
        nested = [nested]
    deep = {"input": nested, "wait_s": 0}
    refused = client.post(f"/functions/{fn}/run", json=deep, headers=auth)
    assert refused.status_code == 400 and "nested" in refused.get_json()["error"]["message"]
