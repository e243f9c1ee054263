"""The API contract: JSON Schemas of every request and response, and the OpenAPI 3.1 document.

The same schemas serve GET /openapi.json and check the JSON bodies the routes accept (`check`,
after the routes' own checks, whose messages are more specific): a body the document rejects is
never accepted. The responses are held to the document by tests (tests/security: schemathesis
against the app, and the tenant and auth tests' real responses validated against it).

Bounds that depend on the installation (limit ceilings, the longest wait, body sizes) are filled
in from the Settings, so the document describes the running API, not a default one.
"""

from __future__ import annotations

import copy
import functools

import jsonschema

from nanogrid import __version__, schedules
from nanogrid.config import Settings
from nanogrid.functions import ID_PATTERN, INIT_MODES, MAX_ALIAS_WEIGHTS, NAME_PATTERN
from nanogrid.layers import MAX_REQUIREMENTS_BYTES
from nanogrid.jobs import ErrorType, Status, retries
from nanogrid.limits import FRACTIONAL_LIMITS, LIMIT_FLOORS, Limits

JOB_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
JOB_STATUSES = [status.value for status in Status]
ERROR_TYPES = [error_type.value for error_type in ErrorType]
TIMESTAMP = {"type": "string", "description": "UTC, ISO 8601"}
MAX_MESSAGE_CHARS = 300


def _nullable(schema: dict) -> dict:
    schema = dict(schema)
    schema["type"] = [schema["type"], "null"]
    return schema


def limit_schemas(settings: Settings) -> dict[str, dict]:
    """Each run limit as the API accepts it: a number from its floor to this installation's ceiling."""
    return {name: {"type": "number" if name in FRACTIONAL_LIMITS else "integer",
                   "minimum": LIMIT_FLOORS[name], "maximum": getattr(settings, name).ceiling}
            for name in Limits.names()}


def requested_limits(settings: Settings) -> dict:
    return {"type": ["object", "null"], "additionalProperties": False,
            "properties": {name: _nullable(s) for name, s in limit_schemas(settings).items()},
            "description": "Lower (or, up to the ceiling, raise) the defaults of GET /limits; null keeps a default."}


def env_schema() -> dict:
    return {"type": ["object", "null"], "propertyNames": {"pattern": ENV_NAME_PATTERN},
            "additionalProperties": {"type": "string"},
            "description": "Environment variables for every run (at most 16 KiB as JSON)."}


def retries_schema() -> dict:
    return {"type": ["object", "null"], "additionalProperties": False, "required": ["max"], "properties": {
        "max": {"type": "integer", "minimum": 0, "maximum": retries.MAX_RETRIES,
                "description": "retries after the first attempt (0: none)"},
        "on": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(retries.RETRYABLE)},
               "description": "the error types that are retried (default: all of these)"},
        "backoff_s": {"type": "number", "minimum": 0, "maximum": retries.MAX_BACKOFF_S,
                      "description": f"seconds before the first retry, doubled for each next "
                                     f"(default {retries.DEFAULT_BACKOFF_S:g})"},
    }, "description": "run the job again when it fails with one of `on`; null: never"}


CALLBACK_URL = {"type": ["string", "null"], "maxLength": 2048, "pattern": "^https?://",
                "description": "POST the job document here when the job ends, signed (X-NanoGrid-Signature); "
                               "loopback, link-local and the platform's own addresses are refused"}


def schedule_request_schemas() -> dict[str, dict]:
    fields = {
        "cron": {"type": ["string", "null"], "description": "five fields: minute hour day-of-month month day-of-week"},
        "interval_s": {"type": ["number", "null"], "minimum": 1, "maximum": 366 * 86400},
        "timezone": {"type": "string", "description": "IANA time zone of the cron expression (default UTC)"},
        "input": {"description": "the event of every run (default {})"},
        "overlap": {"type": "string", "enum": list(schedules.OVERLAP),
                    "description": "skip: no new run while the previous one has not finished (default allow)"},
        "enabled": {"type": "boolean"},
    }
    return {"ScheduleCreate": {"type": "object", "additionalProperties": False, "properties": fields},
            "ScheduleUpdate": {"type": "object", "additionalProperties": False, "properties": fields}}


REQUIREMENTS = {"type": ["string", "null"], "maxLength": MAX_REQUIREMENTS_BYTES,
                "description": "requirements.txt text: PEP 508 requirements, one per line (no pip options, no "
                               "URLs); installed once, wheels only, into a layer shared by every function with the "
                               "same set (a zip's requirements.txt beside main.py does the same)"}
INIT = {"type": "string", "enum": list(INIT_MODES),
        "description": "handler mode: import main.py once per warm sandbox and fork each run from that state "
                       "(once, the default), or import it for every run (per_run)"}
SECRET_NAMES = {"type": ["array", "null"], "maxItems": 50,
                "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"}}
SECRET = {"type": "object", "additionalProperties": False, "required": ["name", "created_at", "updated_at"],
          "properties": {"name": {"type": "string"}, "created_at": TIMESTAMP, "updated_at": TIMESTAMP}}
MAX_CONCURRENCY_SCHEMA = {"type": ["integer", "null"], "minimum": 1, "maximum": 10_000,
                          "description": "at most this many runs of the function at once, on all workers; more "
                                         "wait in PENDING for a slot (null: no bound of its own)"}
WEIGHTS = {"type": "object", "maxProperties": MAX_ALIAS_WEIGHTS,
           "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
           "description": "other versions (\"<n>\": share) that get that share of the alias's runs"}
ALIAS = {"type": "object", "additionalProperties": False, "required": ["version", "weights", "previous"],
         "properties": {"version": {"type": "integer", "minimum": 1}, "weights": WEIGHTS,
                        "previous": {"type": ["integer", "null"], "description": "where it pointed before"}}}
VERSION = {"type": "object", "required": ["version", "code_sha256", "handler", "requirements", "init", "build",
                                          "aliases", "created_at"], "properties": {
    "version": {"type": "integer", "minimum": 1}, "code_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "handler": {"type": ["string", "null"]}, "requirements": {"type": ["string", "null"]},
    "init": {"type": ["string", "null"]}, "aliases": {"type": "array", "items": {"type": "string"}},
    "created_at": TIMESTAMP}}
BUILD = {"type": "object", "additionalProperties": False,
         "required": ["status", "layer_sha256", "size_bytes", "error"], "properties": {
             "status": {"type": "string", "enum": ["pending", "building", "ready", "failed"]},
             "layer_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
             "size_bytes": {"type": ["integer", "null"], "description": "the stored layer's size"},
             "error": {"type": ["string", "null"]}}}


def request_schemas(settings: Settings) -> dict[str, dict]:
    """The JSON request bodies, self-contained (no $ref), as `check` validates them."""
    limits = requested_limits(settings)
    timeout = _nullable(limit_schemas(settings)["timeout_s"])
    memory = _nullable(limit_schemas(settings)["memory_mb"])
    function_fields = {
        "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
        "code": {"type": "string", "description": "Python source of main.py (UTF-8; must parse)"},
        "handler": {"type": ["string", "null"],
                    "description": "the function main.py defines to call; omitted: `handler` if defined, "
                                   "else main.py runs as a script with the input on stdin"},
        "timeout_s": timeout,
        "memory_mb": memory,
        "limits": limits,
        "env": env_schema(),
        "retries": retries_schema(),
        "callback_url": {**CALLBACK_URL, "description": "the default callback_url of the function's runs"},
        "requirements": REQUIREMENTS,
        "init": INIT,
        "max_concurrency": MAX_CONCURRENCY_SCHEMA,
        "secrets": {**SECRET_NAMES, "description": "the tenant's secrets each run reads as files, "
                                                   "/run/secrets/<NAME> (never environment variables)"},
    }
    return {
        "FunctionCreate": {"type": "object", "additionalProperties": False, "required": ["name", "code"],
                           "properties": function_fields},
        "FunctionUpdate": {"type": "object", "additionalProperties": False,
                           "properties": {**function_fields,
                                          "name": {**function_fields["name"],
                                                   "description": "must be the function's current name"}}},
        **schedule_request_schemas(),
        "RunRequest": {"type": "object", "additionalProperties": False, "properties": {
            "input": {"description": "the event passed to the handler (or to the script on stdin); any JSON; "
                                     "absent: {}"},
            "wait_s": {"type": ["number", "null"], "minimum": 0, "maximum": settings.max_wait_s,
                       "description": f"seconds to wait for the result (default {settings.default_wait_s:g}); "
                                      "0 returns 202 with the PENDING job at once"},
            "limits": limits,
            "callback_url": CALLBACK_URL,
            "version": {"type": "integer", "minimum": 1, "description": "run this kept version (default: the "
                                                                         "current one)"},
            "alias": {"type": "string", "description": "run the version this alias sends the run to"},
        }},
        "SecretRequest": {"type": "object", "additionalProperties": False, "required": ["value"], "properties": {
            "value": {"type": "string", "minLength": 1, "description": "stored encrypted; never returned"}}},
        "AliasRequest": {"type": "object", "additionalProperties": False, "required": ["version"], "properties": {
            "version": {"type": "integer", "minimum": 1}, "weights": WEIGHTS}},
    }


def _form_schema(settings: Settings, create: bool) -> dict:
    text = {"type": "string"}
    schema = {"type": "object", "additionalProperties": False, "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream",
                 "description": "a .py source file, or a .zip with main.py at its top level"},
        "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
        "handler": text,
        "timeout_s": {"type": "string", "description": "a number, as text"},
        "memory_mb": {"type": "string", "description": "a whole number, as text"},
        "limits": {"type": "string", "description": "a JSON object, as text (see FunctionCreate.limits)"},
        "env": {"type": "string", "description": "a JSON object, as text (see FunctionCreate.env)"},
        "retries": {"type": "string", "description": "a JSON object, as text (see FunctionCreate.retries)"},
        "callback_url": {"type": "string", "description": "see FunctionCreate.callback_url"},
        "requirements": {"type": "string", "description": "requirements.txt text, as a field or a file part "
                                                          "(see FunctionCreate.requirements)"},
        "init": {"type": "string", "enum": list(INIT_MODES), "description": "see FunctionCreate.init"},
        "max_concurrency": {"type": "string", "description": "a whole number, as text (see FunctionCreate)"},
        "secrets": {"type": "string", "description": "a JSON list of names, as text (see FunctionCreate.secrets)"},
    }}
    if create:
        schema["required"] = ["name", "file"]
    return schema


def response_schemas(settings: Settings) -> dict[str, dict]:
    effective = {name: {"type": "number" if name in FRACTIONAL_LIMITS else "integer"} for name in Limits.names()}
    return {
        "Error": {"type": "object", "additionalProperties": False, "required": ["error"], "properties": {
            "error": {"type": "object", "additionalProperties": False, "required": ["code", "message"],
                      "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "Function": {"type": "object", "additionalProperties": False, "required": [
            "function_id", "name", "version", "code_sha256", "handler", "timeout_s", "memory_mb",
            "created_at", "updated_at", "limits"], "properties": {
            "function_id": {"type": "string", "pattern": ID_PATTERN.pattern},
            "name": {"type": "string", "pattern": NAME_PATTERN.pattern},
            "version": {"type": "integer", "minimum": 1},
            "code_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "handler": {"type": ["string", "null"]},
            "timeout_s": {"type": ["number", "null"]},
            "memory_mb": {"type": ["integer", "null"]},
            "retries": retries_schema(),
            "callback_url": {"type": ["string", "null"]},
            "requirements": {"type": ["string", "null"], "description": "the normalised requirements"},
            "init": {"type": "string", "enum": list(INIT_MODES)},
            "build": {"oneOf": [{"type": "null"}, BUILD], "description": "null: no requirements"},
            "max_concurrency": MAX_CONCURRENCY_SCHEMA,
            "secrets": SECRET_NAMES,
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "aliases": {"type": "object", "additionalProperties": ALIAS, "description": "the function's aliases"},
            "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
            "limits": {"type": "object", "additionalProperties": False, "required": list(effective),
                       "properties": effective, "description": "the effective limits of a run"},
        }},
        "Build": {"type": "object", "additionalProperties": False,
                  "required": [*BUILD["required"], "requirements", "log", "build_s"], "properties": {
                      **BUILD["properties"], "requirements": {"type": "string"},
                      "log": {"type": "string", "description": "the tail of pip's output"},
                      "build_s": {"type": ["number", "null"], "description": "how long the build took"}}},
        "Version": {**VERSION, "properties": {**VERSION["properties"], "build": {"oneOf": [{"type": "null"}, BUILD]}}},
        "VersionList": {"type": "object", "additionalProperties": False, "required": ["versions"], "properties": {
            "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}}}},
        "Alias": {**ALIAS, "required": ["name", *ALIAS["required"]],
                  "properties": {"name": {"type": "string"}, **ALIAS["properties"]}},
        "AliasList": {"type": "object", "additionalProperties": False, "required": ["aliases"], "properties": {
            "aliases": {"type": "array", "items": {"$ref": "#/components/schemas/Alias"}}}},
        "Secret": SECRET,
        "SecretList": {"type": "object", "additionalProperties": False, "required": ["secrets"], "properties": {
            "secrets": {"type": "array", "items": {"$ref": "#/components/schemas/Secret"}}}},
        "FunctionList": {"type": "object", "additionalProperties": False, "required": ["functions"],
                         "properties": {"functions": {"type": "array",
                                                      "items": {"$ref": "#/components/schemas/Function"}}}},
        "JobList": {"type": "object", "additionalProperties": False, "required": ["jobs", "next_cursor"],
                    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                                   "next_cursor": {"type": ["string", "null"],
                                                   "description": "pass as cursor for the next page; null: the last"}}},
        "Job": {"type": "object", "additionalProperties": False, "required": [
            "job_id", "function_id", "function_version", "status", "created_at"], "properties": {
            "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "function_id": {"type": "string", "pattern": ID_PATTERN.pattern},
            "function_version": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": JOB_STATUSES},
            "result": {"description": "the handler's return value (JSON), null in script mode"},
            "stdout": {"type": "string"}, "stderr": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "error": {"type": ["object", "null"], "required": ["type", "message"],
                      "properties": {"type": {"type": "string", "enum": ERROR_TYPES,
                                              "description": "why the run failed (README: error types)"},
                                     "message": {"type": "string"},
                                     "signal": {"type": "integer", "description": "the signal that ended it"}}},
            "truncated": {"type": "boolean"},
            "duration_ms": {"type": ["integer", "null"]},
            "created_at": TIMESTAMP, "started_at": _nullable(TIMESTAMP), "finished_at": _nullable(TIMESTAMP),
            "ai_usage": {"type": ["object", "null"]},
            "peak_memory_bytes": {"type": ["integer", "null"]},
            "cpu_time_ms": {"type": ["integer", "null"]},
            "attempt": {"type": "integer", "minimum": 1,
                        "description": "which attempt this is (the function's retry policy runs a job again)"},
            "attempts": {"type": "array", "description": "every attempt that failed, retried or final", "items": {
                "type": "object", "required": ["attempt", "error"], "properties": {
                    "attempt": {"type": "integer", "minimum": 1},
                    "error": {"type": ["object", "null"]}, "exit_code": {"type": ["integer", "null"]},
                    "started_at": _nullable(TIMESTAMP), "finished_at": _nullable(TIMESTAMP),
                    "duration_ms": {"type": ["integer", "null"]}}}},
            "callback_url": {"type": ["string", "null"]},
            "trigger": {"type": ["object", "null"], "description": "a schedule's run: {schedule_id, tick}"},
            "alias": {"type": ["string", "null"], "description": "the alias the run was asked for by (its "
                                                                 "function_version is the one it resolved to)"},
            "callbacks": {"type": "array", "description": "each callback's delivery", "items": {
                "type": "object", "required": ["url", "attempts", "status"], "properties": {
                    "url": {"type": "string"}, "attempts": {"type": "integer", "minimum": 0},
                    "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                    "last_error": {"type": ["string", "null"]}, "last_status_code": {"type": ["integer", "null"]},
                    "delivered_at": TIMESTAMP}}},
        }},
        "Schedule": {"type": "object", "additionalProperties": False, "required": [
            "schedule_id", "function_id", "cron", "interval_s", "timezone", "input", "overlap", "enabled",
            "created_at", "updated_at", "next_run_at"], "properties": {
            "schedule_id": {"type": "string", "pattern": schedules.ID_PATTERN.pattern},
            "function_id": {"type": "string", "pattern": ID_PATTERN.pattern},
            "cron": {"type": ["string", "null"]}, "interval_s": {"type": ["number", "null"]},
            "timezone": {"type": "string"}, "input": {}, "overlap": {"type": "string", "enum": list(schedules.OVERLAP)},
            "enabled": {"type": "boolean"}, "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
            "next_run_at": _nullable(TIMESTAMP), "last_run_at": _nullable(TIMESTAMP),
            "last_job_id": {"type": ["string", "null"]}}},
        "ScheduleList": {"type": "object", "additionalProperties": False, "required": ["schedules"], "properties": {
            "schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}}}},
        "SigningSecret": {"type": "object", "additionalProperties": False,
                          "required": ["tenant", "secret", "created_at"], "properties": {
                              "tenant": {"type": "string"}, "secret": {"type": "string"},
                              "created_at": TIMESTAMP}},
        "Limits": {"type": "object", "additionalProperties": False, "required": list(effective), "properties": {
            name: {"type": "object", "additionalProperties": False, "required": ["default", "ceiling"],
                   "properties": {"default": {"type": "number"}, "ceiling": {"type": "number"}}}
            for name in effective}},
        "Health": {"type": "object", "required": ["status", "components"], "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "components": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}},
            "failing": {"type": "array", "items": {"type": "string"}},
        }},
    }


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict:
    return {"application/json": {"schema": _ref(name)}}


RETRY_AFTER = {"Retry-After": {"required": True, "description": "seconds to wait before trying again",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
ERROR_TEXT = {
    400: "the request is malformed or breaks a rule (the message says which)",
    401: "a key is required (some key exists) and none, or no valid one, was given",
    404: "no such function, job, version, alias or secret, or another tenant's",
    405: "the path does not take this method",
    409: "the name is taken, the job already ended, or the function's requirements could not be installed "
         "(build_failed)",
    413: "the body, the code, the input or the unpacked zip is too large",
    415: "the body is not JSON (or multipart where the route takes it)",
    422: "the Idempotency-Key was used before for a different request",
    429: "rate limit (per key, or per client address) or tenant quota exceeded",
    500: "internal error (no details are returned)",
    503: "a dependency is unavailable, or the queue is too deep (backpressure)",
}


def _health_check(operation_id: str, summary: str) -> dict:
    return {"get": {
        "operationId": operation_id, "summary": summary, "security": [],
        "responses": {"200": {"description": "every required component is up", "content": _json("Health")},
                      "503": {"description": "a required component is down", "content": _json("Health")},
                      **_errors(405, 500)}}}


def _errors(*codes: int) -> dict:
    responses = {}
    for code in codes:
        response = {"description": ERROR_TEXT[code], "content": _json("Error")}
        if code in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[str(code)] = response
    return responses


GUARDED = (401, 405, 429, 500, 503)  # any route behind authentication and rate limiting may answer these


def _function_id(required: bool = True) -> dict:
    """The function id: in the path, or (required=False) an optional query filter."""
    return {"name": "function_id", "in": "path" if required else "query", "required": required,
            "schema": {"type": "string", "pattern": ID_PATTERN.pattern}}


# The data of every event of a run's stream is a JSON object: status {"status"}, stdout and stderr
# {"text"}, result {"item"}, end: the job's document.
EVENT_DATA = {"type": "object", "description": "an event's data: status {status, attempt?}, stdout/stderr {text}, "
                                               "result {item}, end: the job document"}
TIME_PARAMETER = {"type": "string", "description": "ISO 8601 (2026-12-01T10:00:00Z) or seconds since the epoch"}
HISTORY_PARAMETERS = [
    {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": JOB_STATUSES}},
    {"name": "since", "in": "query", "required": False, "description": "created at or after", "schema": TIME_PARAMETER},
    {"name": "until", "in": "query", "required": False, "description": "created at or before", "schema": TIME_PARAMETER},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    {"name": "cursor", "in": "query", "required": False, "description": "the previous page's next_cursor",
     "schema": {"type": "string"}},
]


def _job_id() -> dict:
    return {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": JOB_ID_PATTERN}}


@functools.lru_cache(maxsize=8)
def _document(settings: Settings) -> dict:
    upload = {"required": True, "content": {
        "application/json": {"schema": _ref("FunctionCreate")},
        "multipart/form-data": {"schema": _form_schema(settings, create=True)}}}
    update = {"required": True, "content": {
        "application/json": {"schema": _ref("FunctionUpdate")},
        "multipart/form-data": {"schema": _form_schema(settings, create=False)}}}
    job_response = {"content": _json("Job")}
    paths = {
        "/health": _health_check("health", "Ready to run functions: the API's dependencies, a live worker and "
                                           "its sandbox engine (never needs a key)"),
        "/health/live": _health_check("healthLive", "The API process and its own dependencies, not the workers: "
                                                    "the load balancer's check (never needs a key)"),
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document",
            "responses": {"200": {"description": "the OpenAPI 3.1 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(*GUARDED)}}},
        "/limits": {"get": {
            "operationId": "limits", "summary": "Default and ceiling of every run limit",
            "responses": {"200": {"description": "the limits", "content": _json("Limits")}, **_errors(*GUARDED)}}},
        "/functions": {
            "get": {"operationId": "listFunctions", "summary": "The tenant's functions",
                    "responses": {"200": {"description": "the functions, oldest first",
                                          "content": _json("FunctionList")}, **_errors(*GUARDED)}},
            "post": {"operationId": "createFunction", "summary": "Upload a function (JSON, or multipart .py/.zip)",
                     "requestBody": upload,
                     "responses": {"201": {"description": "created", "content": _json("Function"),
                                           "headers": {"Location": {"required": True,
                                                                    "schema": {"type": "string"}}}},
                                   **_errors(400, 404, 409, 413, 415, *GUARDED)}},
        },
        "/functions/{function_id}": {
            "parameters": [_function_id()],
            "get": {"operationId": "getFunction", "summary": "One function",
                    "responses": {"200": {"description": "the function", "content": _json("Function")},
                                  **_errors(404, *GUARDED)}},
            "put": {"operationId": "updateFunction",
                    "summary": "New code or settings (a new version); an identical update changes nothing",
                    "requestBody": update,
                    "responses": {"200": {"description": "the function", "content": _json("Function")},
                                  **_errors(400, 404, 409, 413, 415, *GUARDED)}},
            "delete": {"operationId": "deleteFunction", "summary": "Delete a function and its code",
                       "responses": {"204": {"description": "deleted"}, **_errors(404, *GUARDED)}},
        },
        "/secrets": {"get": {"operationId": "listSecrets", "summary": "The tenant's secrets: names and dates, "
                                                                    "never values",
                             "responses": {"200": {"description": "the secrets", "content": _json("SecretList")},
                                           **_errors(*GUARDED)}}},
        "/secrets/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"}}],
            "get": {"operationId": "getSecret", "summary": "A secret's name and dates (never its value)",
                    "responses": {"200": {"description": "the secret", "content": _json("Secret")},
                                  **_errors(400, 404, *GUARDED)}},
            "put": {"operationId": "putSecret", "summary": "Create or change a secret (stored encrypted)",
                    "requestBody": {"required": True, "content": _json("SecretRequest")},
                    "responses": {"200": {"description": "the secret", "content": _json("Secret")},
                                  **_errors(400, 413, 415, *GUARDED)}},
            "delete": {"operationId": "deleteSecret", "summary": "Delete a secret",
                       "responses": {"204": {"description": "deleted"}, **_errors(400, 404, *GUARDED)}},
        },
        "/functions/{function_id}/versions": {
            "parameters": [_function_id()],
            "get": {"operationId": "listVersions", "summary": "The function's kept versions, newest first",
                    "responses": {"200": {"description": "the versions", "content": _json("VersionList")},
                                  **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/versions/{version}": {
            "parameters": [_function_id(), {"name": "version", "in": "path", "required": True,
                                            "schema": {"type": "integer", "minimum": 1}}],
            "get": {"operationId": "getVersion", "summary": "One version: its code's hash and settings",
                    "responses": {"200": {"description": "the version", "content": _json("Version")},
                                  **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/aliases": {
            "parameters": [_function_id()],
            "get": {"operationId": "listAliases", "summary": "The function's aliases",
                    "responses": {"200": {"description": "the aliases", "content": _json("AliasList")},
                                  **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/aliases/{name}": {
            "parameters": [_function_id(), {"name": "name", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
            "get": {"operationId": "getAlias", "summary": "One alias",
                    "responses": {"200": {"description": "the alias", "content": _json("Alias")},
                                  **_errors(404, *GUARDED)}},
            "put": {"operationId": "putAlias", "summary": "Point an alias at a version (moving it is a rollback "
                                                          "or a roll forward), with optional weights",
                    "requestBody": {"required": True, "content": _json("AliasRequest")},
                    "responses": {"200": {"description": "the alias", "content": _json("Alias")},
                                  **_errors(400, 404, 415, *GUARDED)}},
            "delete": {"operationId": "deleteAlias", "summary": "Remove an alias",
                       "responses": {"204": {"description": "removed"}, **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/build": {
            "parameters": [_function_id()],
            "get": {"operationId": "getBuild", "summary": "The function's dependency build, with pip's log",
                    "responses": {"200": {"description": "the build", "content": _json("Build")},
                                  **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/run": {
            "parameters": [_function_id()],
            "post": {"operationId": "runFunction",
                     "summary": "Run a function; wait up to wait_s for the result, or (Accept: text/event-stream) "
                                "stream the run's events until it ends",
                     "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                     "description": "the same key (per tenant, for 24 hours) gives the same job, "
                                                    "from any API process; the replay says Idempotent-Replayed",
                                     "schema": {"type": "string", "pattern": "^[\\x21-\\x7e][\\x20-\\x7e]{0,254}$"}}],
                     "requestBody": {"required": False, "content": _json("RunRequest")},
                     "responses": {"200": {"description": "the job ended within wait_s, or the run's events",
                                           "content": {**job_response["content"],
                                                       "text/event-stream": {"schema": EVENT_DATA}}},
                                   "202": {"description": "the job is queued or running", **job_response,
                                           "headers": {"Location": {"required": True,
                                                                    "schema": {"type": "string"}}}},
                                   **_errors(400, 404, 409, 413, 415, 422, *GUARDED)}},
        },
        "/jobs": {"get": {"operationId": "listJobs", "summary": "The tenant's jobs, newest first, a page at a time",
                          "parameters": [_function_id(required=False), *HISTORY_PARAMETERS],
                          "responses": {"200": {"description": "a page of jobs", "content": _json("JobList")},
                                        **_errors(400, 404, *GUARDED)}}},
        "/functions/{function_id}/schedules": {
            "parameters": [_function_id()],
            "post": {"operationId": "createSchedule", "summary": "Run the function on a cron expression or interval",
                     "requestBody": {"required": True, "content": _json("ScheduleCreate")},
                     "responses": {"201": {"description": "the schedule", "content": _json("Schedule"),
                                           "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                                   **_errors(400, 404, 413, 415, *GUARDED)}},
            "get": {"operationId": "listSchedules", "summary": "The function's schedules",
                    "responses": {"200": {"description": "the schedules", "content": _json("ScheduleList")},
                                  **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/schedules/{schedule_id}": {
            "parameters": [_function_id(), {"name": "schedule_id", "in": "path", "required": True,
                                            "schema": {"type": "string", "pattern": schedules.ID_PATTERN.pattern}}],
            "get": {"operationId": "getSchedule", "summary": "A schedule",
                    "responses": {"200": {"description": "the schedule", "content": _json("Schedule")},
                                  **_errors(404, *GUARDED)}},
            "patch": {"operationId": "updateSchedule", "summary": "Change a schedule (a new rhythm starts now)",
                      "requestBody": {"required": True, "content": _json("ScheduleUpdate")},
                      "responses": {"200": {"description": "the schedule", "content": _json("Schedule")},
                                    **_errors(400, 404, 409, 413, 415, *GUARDED)}},
            "delete": {"operationId": "deleteSchedule", "summary": "Delete a schedule: it fires no more",
                       "responses": {"204": {"description": "deleted"}, **_errors(404, *GUARDED)}},
        },
        "/functions/{function_id}/jobs": {
            "parameters": [_function_id()],
            "get": {"operationId": "listFunctionJobs", "summary": "A function's jobs, newest first, a page at a time",
                    "parameters": HISTORY_PARAMETERS,
                    "responses": {"200": {"description": "a page of jobs", "content": _json("JobList")},
                                  **_errors(400, 404, *GUARDED)}},
        },
        "/jobs/{job_id}": {
            "parameters": [_job_id()],
            "get": {"operationId": "getJob", "summary": "A job's state and outputs",
                    "parameters": [{"name": "wait_s", "in": "query", "required": False,
                                    "description": "wait until the job has ended, at most this many seconds",
                                    "schema": {"type": "number", "minimum": 0, "maximum": settings.max_wait_s}}],
                    "responses": {"200": {"description": "the job", **job_response},
                                  **_errors(400, 404, *GUARDED)}},
        },
        "/jobs/{job_id}/events": {
            "parameters": [_job_id()],
            "get": {"operationId": "jobEvents",
                    "summary": "The run's live events (Server-Sent Events: status, stdout, stderr, result, end)",
                    "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                                    "description": "continue after this event",
                                    "schema": {"type": "string", "pattern": r"^\d+-\d+$"}},
                                   {"name": "last_event_id", "in": "query", "required": False,
                                    "description": "as Last-Event-ID, for clients that cannot set headers",
                                    "schema": {"type": "string", "pattern": r"^\d+-\d+$"}}],
                    "responses": {"200": {"description": "the events, until the end event",
                                          "content": {"text/event-stream": {"schema": EVENT_DATA}}},
                                  **_errors(400, 404, *GUARDED)}},
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [_job_id()],
            "post": {"operationId": "cancelJob", "summary": "Stop a queued or running job (FAILED, cancelled)",
                     "responses": {"200": {"description": "the cancelled job", **job_response},
                                   **_errors(404, 409, *GUARDED)}},
        },
        "/callbacks/signing-secret": {"get": {
            "operationId": "getSigningSecret",
            "summary": "The tenant's secret for checking its callbacks' signatures (made on first use)",
            "responses": {"200": {"description": "the secret", "content": _json("SigningSecret")},
                          **_errors(*GUARDED)}}},
        "/callbacks/signing-secret/rotate": {"post": {
            "operationId": "rotateSigningSecret", "summary": "Replace the tenant's signing secret",
            "responses": {"200": {"description": "the new secret", "content": _json("SigningSecret")},
                          **_errors(*GUARDED)}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics (never rate limited)",
            "responses": {"200": {"description": "the metrics", "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}}}}, **_errors(401, 405, 500)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "NanoGrid", "version": __version__,
                 "description": "Self-hosted functions. Every route but /health needs "
                                "`Authorization: Bearer <key>` once any key exists (`nanogrid keys create`); "
                                "an installation without keys is open and acts for the tenant `default`."},
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "an API key: ng_<key id>_<secret>"}},
            "schemas": {**request_schemas(settings), **response_schemas(settings)},
        },
    }


def document(settings: Settings) -> dict:
    """The OpenAPI 3.1 document of this installation (a copy: callers may change it)."""
    return copy.deepcopy(_document(settings))


@functools.lru_cache(maxsize=32)
def _validator(settings: Settings, name: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(request_schemas(settings)[name])


class SchemaError(ValueError):
    """The body does not match its schema; the message (bounded) says where and why."""


def check(settings: Settings, name: str, body) -> None:
    """SchemaError unless body matches the request schema `name`."""
    error = jsonschema.exceptions.best_match(_validator(settings, name).iter_errors(body))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "the body"
    message = f"{where}: {error.message}"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    raise SchemaError(message)
