"""API routes: functions, runs, jobs, health, limits and the OpenAPI document.

Every lookup passes the request's tenant (nanogrid.api.auth): another tenant's function or job is
NotFound, the same 404 as an unknown id.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import random
import re
import time

from flask import Blueprint, current_app, jsonify, request, url_for

from nanogrid import bundles, functions, layers, schedules
from nanogrid.ai import client as ai_client
from nanogrid.api import auth, ratelimit, schema, streams
from nanogrid.api.errors import ApiError
from nanogrid.callbacks import CallbackRefused
from nanogrid.errors import NotFound, Unavailable
from nanogrid.jobs import TERMINAL, ErrorType, Status
from nanogrid.jobs.index import WORKER_TTL_S, alive
from nanogrid.jobs import retries
from nanogrid.jobs.records import error
from nanogrid.limits import LimitError, Limits
from nanogrid.services import Services
from nanogrid.task_names import BUILD_TASK

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ENV_BYTES = 16 * 1024
FUNCTION_FIELDS = {"name", "code", "handler", "timeout_s", "memory_mb", "limits", "env", "retries", "callback_url",
                   "requirements", "init", "max_concurrency", "secrets"}
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_SECRET_BYTES = 64 * 1024
MAX_FUNCTION_SECRETS = 50
RUN_FIELDS = {"input", "wait_s", "limits", "callback_url", "version", "alias"}
MAX_CONCURRENCY = 10_000
MAX_JSON_DEPTH = 100  # arrays and objects inside one another, in any JSON body
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
JSON_WHITESPACE = b" \t\r\n"  # what JSON allows around a value (not every byte Python calls space)
CURSOR = re.compile(r"^\d{13}\.\d{6}\|[0-9a-f-]{36}$")  # a history position: created_at|job_id


def services() -> Services:
    return current_app.extensions["nanogrid"]


# -- request parsing ---------------------------------------------------------------------------

def read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(f"the request body exceeds {limit} bytes", status=413, code="too_large")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ApiError(f"the request body exceeds {limit} bytes", status=413, code="too_large")
    return data


def parse_json(data: bytes):
    try:
        value = json.loads(data)
    except RecursionError:
        raise ApiError("the JSON document is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ApiError(f"the JSON document is nested more than {MAX_JSON_DEPTH} levels deep", code="invalid_json")
    return value


def json_depth(value) -> int:
    """How deeply arrays and objects nest in value (iteratively: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_schema(name: str, body: dict) -> None:
    """The body must also match the OpenAPI document's schema (after the more specific checks above)."""
    try:
        schema.check(services().settings, name, body)
    except schema.SchemaError as exc:
        raise ApiError(str(exc)) from None


def json_object(limit: int, allowed: set[str], *, empty_ok: bool = False) -> dict:
    data = read_body(limit)
    if empty_ok and not data.strip(JSON_WHITESPACE):
        return {}
    if request.mimetype != "application/json":
        raise ApiError("send a JSON body with Content-Type: application/json", status=415, code="unsupported_media_type")
    body = parse_json(data)
    if not isinstance(body, dict):
        raise ApiError("the JSON body must be an object")
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    return body


def function_options(body: dict) -> dict:
    """Per-function limits and env; limits may lower the defaults, never exceed the ceilings."""
    settings = services().settings
    options = {}
    try:
        # timeout_s and memory_mb may also be given at the top level (and multipart form fields).
        top_level = {n: body[n] for n in ("timeout_s", "memory_mb") if body.get(n) is not None}
        options.update(Limits.check(settings, top_level))
        if "limits" in body:
            limits = parse_json(body["limits"].encode()) if isinstance(body["limits"], str) else body["limits"]
            limits = Limits.check(settings, limits)
            clash = [n for n in options if n in limits and limits[n] != options[n]]
            if clash:
                raise LimitError(f"{', '.join(clash)} given both at the top level and in limits, differently")
            options["limits"] = {**limits, **options}
    except LimitError as exc:
        raise ApiError(str(exc)) from None
    if "env" in body:
        env = body["env"]
        if isinstance(env, str):
            env = parse_json(env.encode())
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and ENV_NAME.match(k) and isinstance(v, str) for k, v in env.items())):
            raise ApiError("env must be an object of NAME: string pairs with names like [A-Za-z_][A-Za-z0-9_]*")
        if env and len(json.dumps(env)) > MAX_ENV_BYTES:
            raise ApiError(f"env may hold at most {MAX_ENV_BYTES} bytes", status=413, code="too_large")
        options["env"] = env or {}
    if "retries" in body:
        policy = parse_json(body["retries"].encode()) if isinstance(body["retries"], str) else body["retries"]
        try:
            options["retries"] = retries.check(policy)
        except retries.RetryPolicyError as exc:
            raise ApiError(str(exc)) from None
    if "callback_url" in body:
        options["callback_url"] = callback_url(body["callback_url"] or None)
    if "init" in body:
        if body["init"] not in functions.INIT_MODES:
            raise ApiError(f"init must be one of: {', '.join(functions.INIT_MODES)}")
        options["init"] = body["init"]
    if "requirements" in body:
        options.update(requirements_options(body["requirements"]))
    if "max_concurrency" in body:
        options["max_concurrency"] = max_concurrency(body["max_concurrency"])
    if "secrets" in body:
        options["secrets"] = function_secrets(body["secrets"])
    return options


def function_secrets(names) -> list[str]:
    """The tenant's secrets a function reads (as files): names that exist, each once."""
    if isinstance(names, str):
        names = parse_json(names.encode())
    if names is None:
        return []
    if not isinstance(names, list) or len(names) > MAX_FUNCTION_SECRETS or not all(
            isinstance(n, str) and SECRET_NAME.match(n) for n in names):
        raise ApiError(f"secrets must be a list of at most {MAX_FUNCTION_SECRETS} secret names "
                       "(like [A-Za-z_][A-Za-z0-9_]*)")
    for name in names:
        try:
            services().secrets.metadata(auth.tenant(), name)
        except NotFound:
            raise ApiError(f"secret {name} does not exist; create it first (PUT /secrets/{name})",
                           status=404, code="unknown_secret") from None
    return sorted(set(names))


def max_concurrency(value) -> int | None:
    """At most this many runs of the function at once (None: no bound of its own)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ApiError(f"max_concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, or null for no bound")
    return value


def requirements_options(text) -> dict:
    """The normalised requirements and the layer they name (none: {"requirements": ""})."""
    if text is None:
        text = ""
    try:
        normalised = layers.normalise(text)
    except layers.RequirementsError as exc:
        raise ApiError(str(exc), code="invalid_requirements") from None
    sha = layers.layer_key(normalised, services().settings) if normalised else None
    return {"requirements": normalised, "layer_sha256": sha}


def request_build(doc: dict) -> None:
    """Queue the build of the function's layer when it needs one (new, or failed before)."""
    sha = doc.get("layer_sha256")
    svc = services()
    if sha and svc.layers.request(sha, doc["requirements"]):
        svc.broker.send(BUILD_TASK, [sha], queue=svc.settings.build_queue_name)


def function_view(doc: dict) -> dict:
    view = functions.public(doc, services().settings)
    view["build"] = layers.build_view(layer_of(doc))
    view["aliases"] = {name: alias_view(alias) for name, alias in sorted((doc.get("aliases") or {}).items())}
    return view


def alias_view(alias: dict) -> dict:
    return {"version": alias["version"], "weights": alias.get("weights") or {}, "previous": alias.get("previous")}


def version_view(function: dict, version: dict) -> dict:
    view = {name: version.get(name) for name in ("version", "code_sha256", "handler", "requirements", "init")}
    view["build"] = layers.build_view(layer_of(version))
    view["aliases"] = sorted(name for name, alias in (function.get("aliases") or {}).items()
                             if alias["version"] == version["version"]
                             or str(version["version"]) in (alias.get("weights") or {}))
    view["created_at"] = functions.utc_text(version["created_at"])
    return view


def layer_of(doc: dict) -> dict | None:
    if not doc.get("layer_sha256"):
        return None
    try:
        return services().layers.get(doc["layer_sha256"])
    except NotFound:  # the API died between the function and its layer: a deploy makes it
        return {"layer_sha256": doc["layer_sha256"], "status": layers.Status.PENDING, "error": None, "log": ""}


def callback_url(url) -> str | None:
    """A callback URL the guard lets through (nanogrid/callbacks.py), or None for none."""
    if url is None:
        return None
    try:
        accepted = services().callback_guard.check_url(url)
    except CallbackRefused as exc:
        raise ApiError(str(exc), code="callback_refused") from None
    services().signing_secrets.get(auth.tenant())  # made now, so the workers that sign find it
    return accepted


def read_function_upload(require_name: bool) -> tuple[dict, bundles.Bundle | None]:
    """Parse a JSON or multipart upload into (fields, bundle); the bundle is None when no code was sent."""
    settings = services().settings
    if request.mimetype == "multipart/form-data":
        form = request.form.to_dict()
        if not form and not request.files:
            raise ApiError("the multipart body holds no fields: send the code as a form file named 'file' "
                           "and the settings as form fields")
        unknown = set(form) - (FUNCTION_FIELDS - {"code"})
        if unknown:
            raise ApiError(f"unknown form field(s): {', '.join(sorted(unknown))}")
        body: dict = dict(form)
        json_body = None
        upload = request.files.get("file")
        if set(request.files) - {"file", "requirements"}:
            raise ApiError("send the code as one form file named 'file' (and requirements.txt as 'requirements')")
        if "requirements" in request.files:
            if "requirements" in form:
                raise ApiError("requirements given twice (a form field and a file)")
            text = request.files["requirements"].stream.read(layers.MAX_REQUIREMENTS_BYTES + 1)
            try:
                body["requirements"] = text.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise ApiError("requirements must be UTF-8 text", code="invalid_requirements") from None
        code = None
        if upload is not None:
            data = upload.stream.read(settings.max_code_bytes + 1)
            if len(data) > settings.max_code_bytes:
                raise ApiError(f"the code exceeds {settings.max_code_bytes} bytes", status=413, code="too_large")
            code = (upload.filename or "", data)
    else:
        body = json_object(settings.max_code_bytes + 64 * 1024, FUNCTION_FIELDS)
        code = None
        if "code" in body:
            if not isinstance(body["code"], str):
                raise ApiError("code must be a string of Python source")
            code = ("main.py", body["code"])
        json_body = body
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not functions.NAME_PATTERN.match(name)):
        raise ApiError("name must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", code="invalid_name")
    if require_name and name is None:
        raise ApiError("name is required", code="invalid_name")
    if require_name and code is None:
        raise ApiError("code is required: a 'code' string (JSON) or a 'file' (multipart .py or .zip)")
    handler = body.get("handler")
    if handler is not None and not isinstance(handler, str):
        raise ApiError("handler must be a string")
    options = function_options(body)
    if json_body is not None:
        check_schema("FunctionCreate" if require_name else "FunctionUpdate", json_body)
    bundle = None
    if code is not None:
        bundle = _bundle(code, handler or None)
        if bundle.requirements is not None:
            if "requirements" in options:
                raise ApiError(f"requirements given twice: a 'requirements' field and the zip's "
                               f"{bundles.REQUIREMENTS}", code="invalid_requirements")
            options.update(requirements_options(bundle.requirements))
    return {"name": name, "handler": handler, **options}, bundle


def _bundle(code: tuple[str, str | bytes], handler: str | None) -> bundles.Bundle:
    filename, content = code
    try:
        if filename.endswith(".zip"):
            return bundles.from_zip(content, handler, services().settings)
        if filename.endswith(".py") or isinstance(content, str):
            return bundles.from_source(content, handler)
    except bundles.BundleError as exc:
        raise ApiError(str(exc), status=413 if exc.too_large else 400, code="invalid_code") from None
    raise ApiError("the file must be a .py source file or a .zip holding main.py", code="invalid_code")


# -- routes ------------------------------------------------------------------------------------

@bp.get("/health")
def health():
    """Ready to run functions: the API's own dependencies, a live worker, a sandbox engine that
    answers (from the workers' heartbeats). 503 names what is missing."""
    svc = services()
    components = _own_components(svc)
    beats = _live_workers(svc, components)
    components["worker"] = ({"status": "ok", "workers": len(beats)} if beats else
                            {"status": "down", "workers": 0, "message": "no worker has sent a heartbeat in the "
                             f"last {WORKER_TTL_S:g} s: runs wait in the queue until one does"})
    components["sandbox"] = _sandbox_component(svc, beats)
    # The AI node is optional: functions that use it fail without it, the platform does not.
    components["ai"] = ai_client.health(svc.settings)
    return _health_answer(components)


@bp.get("/health/live")
def health_live():
    """The API process and what it needs itself (Redis, the tables, the broker): the load balancer's
    and the deployment's check, which must not depend on the workers."""
    return _health_answer(_own_components(services()))


def _own_components(svc: Services) -> dict[str, dict]:
    components: dict[str, dict] = {}
    checks = {
        "redis": lambda: svc.redis.ping(),
        "functions": lambda: _probe_table(svc.functions.table),
        "jobs": lambda: _probe_table(svc.jobs.table),
        "broker": lambda: _probe_broker(svc),
    }
    for name, check in checks.items():
        try:
            check()
            components[name] = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means the component is down
            log.warning("health: %s failed: %s", name, exc)
            components[name] = {"status": "down"}
    return components


def _live_workers(svc: Services, components: dict) -> list[dict]:
    if components["redis"]["status"] != "ok":
        return []
    try:
        beats = svc.jobs.index.workers().values()
    except Unavailable:
        return []
    now = time.time()
    return [beat for beat in beats if alive(beat, now)]


def _sandbox_component(svc: Services, beats: list[dict]) -> dict:
    sandbox = {"mode": svc.settings.sandbox, "isolated": svc.settings.sandbox == "docker"}
    if svc.settings.sandbox == "process":
        sandbox["warning"] = "process sandbox: user code runs as a plain child process and is NOT isolated"
    runtimes = sorted({beat.get("runtime") for beat in beats if beat.get("sandbox") == "ok" and beat.get("runtime")})
    if runtimes:
        sandbox["runtime"] = ", ".join(runtimes)
    if not beats:
        return {"status": "unknown", "optional": True, **sandbox, "message": "no worker to ask"}
    if any(beat.get("sandbox") == "ok" for beat in beats):
        return {"status": "ok", **sandbox}
    return {"status": "down", **sandbox, "message": "the workers' sandbox engine (dockerd) does not answer: "
                                                    "runs wait in the queue until it does"}


def _health_answer(components: dict[str, dict]):
    down = [n for n, c in components.items() if c["status"] != "ok" and not c.get("optional")]
    body = {"status": "ok" if not down else "unavailable", "components": components}
    if down:
        body["failing"] = down
    return jsonify(body), 200 if not down else 503


def _probe_table(table) -> None:
    try:
        table.get("health-probe")
    except NotFound:
        pass


def _probe_broker(svc: Services) -> None:
    svc.broker.ping_connection()


@bp.get("/limits")
def limits():
    return jsonify(services().settings.limits_document())


@bp.get("/openapi.json")
def openapi():
    return jsonify(schema.document(services().settings))


@bp.post("/functions")
def create_function():
    fields, bundle = read_function_upload(require_name=True)
    doc = services().functions.create(fields["name"], bundle, fields, tenant=auth.tenant())
    request_build(doc)
    response = jsonify(function_view(doc))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_function", function_id=doc["function_id"])
    return response


@bp.get("/functions")
def list_functions():
    docs = services().functions.list(auth.tenant())
    return jsonify({"functions": [function_view(d) for d in docs]})


@bp.get("/functions/<function_id>")
def get_function(function_id: str):
    return jsonify(function_view(services().functions.get(function_id, auth.tenant())))


@bp.get("/functions/<function_id>/build")
def get_build(function_id: str):
    doc = services().functions.get(function_id, auth.tenant())
    layer = layer_of(doc)
    if layer is None:
        raise ApiError("the function has no requirements, so nothing is built for it", status=404, code="no_build")
    return jsonify({**layers.build_view(layer), "requirements": doc["requirements"], "log": layer.get("log") or "",
                    "build_s": layer.get("build_s")})


@bp.put("/functions/<function_id>")
def update_function(function_id: str):
    svc = services()
    current = svc.functions.get(function_id, auth.tenant())
    fields, bundle = read_function_upload(require_name=False)
    if fields["name"] is not None and fields["name"] != current["name"]:
        raise ApiError("a function's name cannot be changed; create a new function instead", code="invalid_name")
    if bundle is None and fields["handler"] is not None:
        bundle = _bundle(("main.py", svc.functions.code_of(current)), fields["handler"])
    options = {k: v for k, v in fields.items() if k in functions.SETTINGS_FIELDS}
    if "requirements" in options:
        options["layer_sha256"] = fields["layer_sha256"]
    doc = svc.functions.update(function_id, bundle, options, auth.tenant(), keep_versions=svc.settings.keep_versions)
    request_build(doc)
    return jsonify(function_view(doc))


@bp.get("/functions/<function_id>/versions")
def list_versions(function_id: str):
    svc = services()
    doc = svc.functions.get(function_id, auth.tenant())
    return jsonify({"versions": [version_view(doc, v) for v in svc.functions.versions(doc)]})


@bp.get("/functions/<function_id>/versions/<version>")
def get_version(function_id: str, version: str):
    svc = services()
    doc = svc.functions.get(function_id, auth.tenant())
    if not version.isdigit():
        raise NotFound(f"{function_id} version {version}")
    found = svc.functions.version(doc, int(version))
    return jsonify({**version_view(doc, found), "env": found.get("env") or {}, "retries": found.get("retries"),
                    "callback_url": found.get("callback_url"),
                    "limits": functions.public({**doc, **found}, svc.settings)["limits"]})


@bp.get("/functions/<function_id>/aliases")
def list_aliases(function_id: str):
    doc = services().functions.get(function_id, auth.tenant())
    return jsonify({"aliases": [{"name": name, **alias_view(alias)}
                                for name, alias in sorted((doc.get("aliases") or {}).items())]})


@bp.get("/functions/<function_id>/aliases/<name>")
def get_alias(function_id: str, name: str):
    doc = services().functions.get(function_id, auth.tenant())
    alias = (doc.get("aliases") or {}).get(name)
    if alias is None:
        raise ApiError(f"function {function_id} has no alias {name!r}", status=404, code="not_found")
    return jsonify({"name": name, **alias_view(alias)})


@bp.put("/functions/<function_id>/aliases/<name>")
def put_alias(function_id: str, name: str):
    svc = services()
    doc = svc.functions.get(function_id, auth.tenant())
    body = json_object(16 * 1024, {"version", "weights"})
    try:
        alias = functions.check_alias(doc, name, body.get("version"), body.get("weights"))
    except functions.AliasError as exc:
        raise ApiError(str(exc), code="invalid_alias") from None
    check_schema("AliasRequest", body)
    doc = svc.functions.set_alias(function_id, name, alias, auth.tenant())
    return jsonify({"name": name, **alias_view(doc["aliases"][name])})


@bp.delete("/functions/<function_id>/aliases/<name>")
def delete_alias(function_id: str, name: str):
    try:
        services().functions.delete_alias(function_id, name, auth.tenant())
    except NotFound:
        raise ApiError(f"function {function_id} has no alias {name!r}", status=404, code="not_found") from None
    return "", 204


# -- secrets (nanogrid/storage/secrets.py): values go in, never come out ----------------------

def secret_view(metadata: dict) -> dict:
    return {"name": metadata["name"], **{name: functions.utc_text(metadata[name])
                                         for name in ("created_at", "updated_at") if metadata.get(name)}}


def secret_name(name: str) -> str:
    if not SECRET_NAME.match(name):
        raise ApiError("a secret's name is like an environment variable's: [A-Za-z_][A-Za-z0-9_]{0,127}",
                       code="invalid_name")
    return name


@bp.get("/secrets")
def list_secrets():
    return jsonify({"secrets": [secret_view(m) for m in services().secrets.list(auth.tenant())]})


@bp.put("/secrets/<name>")
def put_secret(name: str):
    body = json_object(MAX_SECRET_BYTES + 1024, {"value"})
    value = body.get("value")
    if not isinstance(value, str) or not value:
        raise ApiError("value must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
        raise ApiError(f"a secret may hold at most {MAX_SECRET_BYTES} bytes", status=413, code="too_large")
    return jsonify(secret_view(services().secrets.put(auth.tenant(), secret_name(name), value)))


@bp.get("/secrets/<name>")
def get_secret(name: str):
    """Its name and dates: a value is never returned."""
    return jsonify(secret_view(services().secrets.metadata(auth.tenant(), secret_name(name))))


@bp.delete("/secrets/<name>")
def delete_secret(name: str):
    services().secrets.delete(auth.tenant(), secret_name(name))
    return "", 204


def run_target(function: dict, body: dict) -> tuple[dict, str | None]:
    """What the run runs: the function at its current version, at the one named, or at the one its
    alias sends it to (drawn by the alias's weights); with the alias's name."""
    svc = services()
    if "version" in body and "alias" in body:
        raise ApiError("name a version or an alias, not both")
    alias_name = body.get("alias")
    if alias_name is not None:
        alias = (function.get("aliases") or {}).get(alias_name) if isinstance(alias_name, str) else None
        if alias is None:
            raise ApiError(f"function {function['function_id']} has no alias {alias_name!r}", status=404,
                           code="not_found")
        version = functions.resolve_alias(alias, random.random())
    else:
        version = body.get("version", function["version"])
        if isinstance(version, bool) or not isinstance(version, int):
            raise ApiError("version must be a whole number (GET /functions/<id>/versions lists them)")
    try:
        settings = svc.functions.run_settings(function, version)
    except NotFound:
        raise ApiError(f"function {function['function_id']} has no version {version} (it was never made or is no "
                       "longer kept)", status=404, code="not_found") from None
    return {**function, **settings}, alias_name


@bp.delete("/functions/<function_id>")
def delete_function(function_id: str):
    svc = services()
    doc = svc.functions.delete(function_id, auth.tenant())
    svc.schedules.delete_all(function_id)  # after the function: a tick meanwhile finds no function
    for sha in svc.functions.layers_unused_after(doc):  # the last function that used a layer: collect it
        svc.layers.delete(sha)
    return "", 204


# -- schedules (nanogrid/schedules.py; fired by nanogrid/scheduler.py) -------------------------

@bp.post("/functions/<function_id>/schedules")
def create_schedule(function_id: str):
    svc = services()
    function = svc.functions.get(function_id, auth.tenant())
    body = json_object(svc.settings.max_input_bytes + 4096, set(schedules.FIELDS))
    check_schedule_input(body, svc.settings.max_input_bytes)
    try:
        schedules.check(body)  # the specific message first, then the document's schema
        check_schema("ScheduleCreate", body)
        doc = svc.schedules.create(function, body)
    except schedules.ScheduleError as exc:
        raise ApiError(str(exc)) from None
    response = jsonify(schedules.public(doc))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_schedule", function_id=function_id,
                                           schedule_id=doc["schedule_id"])
    return response


@bp.get("/functions/<function_id>/schedules")
def list_schedules(function_id: str):
    svc = services()
    svc.functions.get(function_id, auth.tenant())
    return jsonify({"schedules": [schedules.public(doc) for doc in svc.schedules.list(function_id)]})


@bp.get("/functions/<function_id>/schedules/<schedule_id>")
def get_schedule(function_id: str, schedule_id: str):
    svc = services()
    svc.functions.get(function_id, auth.tenant())
    return jsonify(schedules.public(svc.schedules.get(schedule_id, function_id)))


@bp.patch("/functions/<function_id>/schedules/<schedule_id>")
def update_schedule(function_id: str, schedule_id: str):
    svc = services()
    svc.functions.get(function_id, auth.tenant())
    body = json_object(svc.settings.max_input_bytes + 4096, set(schedules.FIELDS))
    check_schedule_input(body, svc.settings.max_input_bytes)
    try:
        schedules.check(body, svc.schedules.get(schedule_id, function_id))
        check_schema("ScheduleUpdate", body)
        doc = svc.schedules.update(schedule_id, function_id, body)
    except schedules.ScheduleError as exc:
        raise ApiError(str(exc)) from None
    return jsonify(schedules.public(doc))


@bp.delete("/functions/<function_id>/schedules/<schedule_id>")
def delete_schedule(function_id: str, schedule_id: str):
    svc = services()
    svc.functions.get(function_id, auth.tenant())
    svc.schedules.delete(schedule_id, function_id)
    return "", 204


def check_schedule_input(body: dict, max_bytes: int) -> None:
    if "input" in body and len(json.dumps(body["input"])) > max_bytes:
        raise ApiError(f"input exceeds {max_bytes} bytes", status=413, code="too_large")


@bp.post("/functions/<function_id>/run")
def run_function(function_id: str):
    svc = services()
    settings = svc.settings
    function = svc.functions.get(function_id, auth.tenant())
    body = json_object(settings.max_input_bytes + 1024, RUN_FIELDS, empty_ok=True)
    function, alias = run_target(function, body)
    layer = layer_of(function)
    if layer is not None and layer["status"] == layers.Status.FAILED:
        raise ApiError(f"the function's requirements could not be installed: {layer['error']} "
                       f"(GET /functions/{function_id}/build has the log; deploy again to retry)",
                       status=409, code="build_failed")
    if auth.guard().queue.overloaded():
        # Backpressure: refuse before anything is written (the job record, its Redis entries).
        raise ApiError(f"the queue holds {settings.max_queue_depth} or more waiting runs; try again later",
                       status=503, code="overloaded",
                       headers={"Retry-After": str(ratelimit.BACKPRESSURE_RETRY_AFTER_S)})
    # No input at all is an empty event (as Lambda has it); "input": null is null.
    run_input = body.get("input", {})
    if len(json.dumps(run_input)) > settings.max_input_bytes:
        raise ApiError(f"input exceeds {settings.max_input_bytes} bytes", status=413, code="too_large")
    wait_s = wait_seconds(body.get("wait_s"), settings.default_wait_s)
    try:
        run_limits = Limits.check(settings, body.get("limits"))  # this run only, within the ceilings
    except LimitError as exc:
        raise ApiError(str(exc)) from None
    run_callback = callback_url(body.get("callback_url"))
    check_schema("RunRequest", body)
    idempotency = idempotency_of(function_id, run_input, run_limits, run_callback, body.get("version"), alias)
    # QuotaExceeded (429) before anything is written; Unavailable (503) when the broker refuses the
    # message, after the job was recorded FAILED/enqueue_failed; IdempotencyConflict (422).
    job, replayed = svc.jobs.submit(function, run_input, run_limits, idempotency, run_callback, alias=alias)
    if wants_event_stream():
        response = streams.response(streams.job_events(svc, job, auth.tenant(), None))
    else:
        if wait_s > 0 and job["status"] not in TERMINAL:
            job = svc.jobs.wait(job["job_id"], wait_s, auth.tenant())
        response = jsonify(svc.jobs.public(job))
        if job["status"] not in TERMINAL:
            response.status_code = 202
    if job["status"] not in TERMINAL or wants_event_stream():
        response.headers["Location"] = url_for("api.get_job", job_id=job["job_id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotency_of(function_id: str, run_input, run_limits: dict, run_callback: str | None, version: int | None = None,
                   alias: str | None = None) -> tuple[str, str] | None:
    """(Idempotency-Key, the request's fingerprint), or None without the header."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiError("Idempotency-Key must be 1 to 255 printable ASCII characters")
    request_said = {"function_id": function_id, "input": run_input, "limits": run_limits, "callback_url": run_callback}
    if version is not None or alias is not None:  # a fingerprint of a plain request stays what it was
        request_said.update(version=version, alias=alias)
    fingerprint = hashlib.sha256(json.dumps(request_said, sort_keys=True).encode()).hexdigest()
    return key, fingerprint


@bp.get("/jobs")
def list_jobs():
    """The tenant's jobs, newest first, a page at a time: ?function_id, status, since, until,
    limit (default 50, at most 200), cursor (the previous page's next_cursor)."""
    function_id = request.args.get("function_id")
    if function_id is not None:
        services().functions.get(function_id, auth.tenant())  # 404 for an unknown or another tenant's
    return _history(function_id)


@bp.get("/functions/<function_id>/jobs")
def list_function_jobs(function_id: str):
    services().functions.get(function_id, auth.tenant())
    return _history(function_id)


def only_parameters(*allowed: str) -> None:
    """A query string names only what the route takes (a misspelt filter must not be ignored)."""
    unknown = set(request.args) - set(allowed)
    if unknown:
        raise ApiError(f"unknown parameter(s): {', '.join(sorted(unknown))}; this route takes: "
                       f"{', '.join(allowed) or 'none'}")


def _history(function_id: str | None):
    args = request.args
    only_parameters("function_id", "status", "since", "until", "limit", "cursor")
    status = args.get("status")
    if status is not None and status not in Status.__members__:
        raise ApiError(f"status must be one of {', '.join(Status)}")
    try:
        limit = int(args.get("limit", 50))
    except ValueError:
        raise ApiError("limit must be a whole number from 1 to 200") from None
    if not 1 <= limit <= 200:
        raise ApiError("limit must be a whole number from 1 to 200")
    jobs, cursor = services().jobs.history(
        auth.tenant(), function_id=function_id, status=Status(status) if status else None,
        since=_time_arg("since"), until=_time_arg("until"), limit=limit, cursor=_decode_cursor(args.get("cursor")))
    return jsonify({"jobs": [services().jobs.public(job) for job in jobs],
                    "next_cursor": _encode_cursor(cursor) if cursor else None})


def _time_arg(name: str) -> float | None:
    """A time in the query: ISO 8601 (2026-12-01T10:00:00Z) or seconds since the epoch."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(f"{name} must be an ISO 8601 time (2026-12-01T10:00:00Z) or seconds since the epoch") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _encode_cursor(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def _decode_cursor(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        cursor = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError:
        cursor = ""
    if not CURSOR.match(cursor):
        raise ApiError("cursor is not one this API gave out (pass next_cursor as it came)")
    return cursor


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """The run's live events (Server-Sent Events), from the start or after Last-Event-ID."""
    svc = services()
    only_parameters("last_event_id")
    job = svc.jobs.get(job_id, auth.tenant())
    given = [value for value in (request.headers.get("Last-Event-ID"), request.args.get("last_event_id"))
             if value is not None]
    if not all(streams.valid_id(value) for value in given):
        raise ApiError("Last-Event-ID (and last_event_id) must be the id of an event of this stream")
    last_id = given[0] if given else None  # the header first: EventSource sends it when it reconnects
    return streams.response(streams.job_events(svc, job, auth.tenant(), last_id))


def wants_event_stream() -> bool:
    """A run request that asks for the run's events instead of its document (Accept)."""
    return request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) == "text/event-stream"


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """The job; with ?wait_s=N, once it has ended or after N seconds (a long poll)."""
    svc = services()
    only_parameters("wait_s")
    raw = request.args.get("wait_s")
    try:
        wait_s = wait_seconds(float(raw) if raw is not None else None, 0)
    except ValueError:
        raise ApiError(f"wait_s must be a number from 0 to {svc.settings.max_wait_s:g}") from None
    job = svc.jobs.get(job_id, auth.tenant())
    if wait_s > 0 and job["status"] not in TERMINAL:
        job = svc.jobs.wait(job_id, wait_s, auth.tenant())
    return jsonify(svc.jobs.public(job))


def wait_seconds(value, default: float) -> float:
    """A request's wait: a number from 0 to NANOGRID_MAX_WAIT_S; absent or null: the default."""
    maximum = services().settings.max_wait_s
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        raise ApiError(f"wait_s must be a number from 0 to {maximum:g}")
    return value


@bp.get("/callbacks/signing-secret")
def get_signing_secret():
    """The tenant's secret for checking its callbacks' X-NanoGrid-Signature (made on first use)."""
    return jsonify(signing_secret_view(services().signing_secrets.get(auth.tenant())))


@bp.post("/callbacks/signing-secret/rotate")
def rotate_signing_secret():
    """A new signing secret; callbacks signed from now on verify only with it."""
    return jsonify(signing_secret_view(services().signing_secrets.rotate(auth.tenant())))


def signing_secret_view(doc: dict) -> dict:
    return {"tenant": doc["tenant"], "secret": doc["signing_secret"],
            "created_at": functions.utc_text(doc["created_at"])}


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Stop a queued or running job: FAILED/cancelled at once, its sandbox killed."""
    svc = services()
    job = svc.jobs.get(job_id, auth.tenant())
    if job["status"] in TERMINAL:
        raise ApiError(f"job {job_id} already ended with {job['status']}", status=409, code="conflict")
    cancelled = svc.jobs.finish(job_id, None, Status.FAILED, error=error(ErrorType.CANCELLED, "cancelled by request"))
    if cancelled is None:
        raise ApiError(f"job {job_id} ended before it could be cancelled", status=409, code="conflict")
    if cancelled.get("worker_id"):
        try:
            svc.broker.broadcast("cancel_job", {"job_id": job_id})
        except Exception as exc:  # noqa: BLE001 - the refused lease renewal stops the run anyway
            log.warning("cancel broadcast for %s failed: %s", job_id, exc)
    return jsonify(svc.jobs.public(cancelled))
