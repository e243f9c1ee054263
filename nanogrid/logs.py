"""Logs of the API and the workers: one JSON object per line, or text for humans.

NANOGRID_LOG_FORMAT=json (the default) or text. A JSON line carries time (UTC, ISO 8601), level,
logger, message, pid, and job_id / function_id whenever the record is about a run: from the
record's `extra`, or from the log scope that execute.run and the task signals open while a run
is processed (a contextvar, so concurrent threads never mix their jobs). Celery's own task lines
get task_id and task_name; gunicorn's access lines get method, route-free path (no query
string), status, duration and remote address. Only the fields named here are ever added: the
environment, settings and `extra` payloads beyond them are never written.

Celery: its documented `setup_logging` signal hands logging over to nanogrid/worker/logs.py.
gunicorn: gunicorn_conf.py's logconfig_dict from `gunicorn_logconfig`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Iterator

from nanogrid.task_names import RUN_TASK

# Fields a record may carry beyond the basics; nothing else from `extra` is written.
FIELDS = ("job_id", "function_id", "function_version", "task_id", "task_name", "status", "error_type",
          "duration_ms")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_scope: ContextVar[dict | None] = ContextVar("nanogrid_log_scope", default=None)


# --- Scope: the fields every record inside a run carries ---------------------------------------

def current() -> dict:
    return dict(_scope.get() or {})


@contextlib.contextmanager
def scope(**fields) -> Iterator[None]:
    """Fields added to every record logged inside (nested scopes inherit their parent's)."""
    token = _scope.set({**(_scope.get() or {}), **fields})
    try:
        yield
    finally:
        _scope.reset(token)


def open_scope(**fields) -> Token:
    """A scope that spans calls (Celery's task_prerun to task_postrun); close it with close_scope."""
    return _scope.set({k: v for k, v in fields.items() if v is not None})


def close_scope(token: Token) -> None:
    try:
        _scope.reset(token)
    except ValueError:  # opened in another context (should not happen in a pool process)
        _scope.set(None)


@contextlib.contextmanager
def job_scope(job_id: str) -> Iterator[None]:
    """The scope of one run. Inside a task that is already about this job (the task signals opened
    it), it joins that scope, so what is bound later (function_id) also reaches Celery's own
    "Task ... succeeded" line, written after the task function has returned."""
    current_fields = _scope.get()
    if current_fields is not None and current_fields.get("job_id") == job_id:
        yield
        return
    with scope(job_id=job_id):
        yield


def bind(**fields) -> None:
    """Add fields to the current scope (no-op outside one)."""
    current_fields = _scope.get()
    if current_fields is not None:
        current_fields.update({k: v for k, v in fields.items() if v is not None})


# --- Formatters ---------------------------------------------------------------------------------

def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def record_fields(record: logging.LogRecord) -> dict:
    """The run and task fields of a record: its own `extra` first, then the scope, then Celery's data."""
    scope_fields = _scope.get() or {}
    fields = {}
    for key in FIELDS:
        value = getattr(record, key, None)
        if value is None:
            value = scope_fields.get(key)
        if value is not None:
            fields[key] = value
    data = getattr(record, "data", None)
    if isinstance(data, Mapping) and "id" in data and "name" in data:  # celery's task lines pass their context here
        fields.setdefault("task_id", data["id"])
        fields.setdefault("task_name", data["name"])
        if data["name"] == RUN_TASK and "job_id" not in fields:
            found = UUID.search(str(data.get("args") or ""))
            if found:
                fields["job_id"] = found.group(0)
    return fields


def _access_fields(record: logging.LogRecord) -> dict | None:
    atoms = record.args
    if record.name != "gunicorn.access" or not isinstance(atoms, Mapping):
        return None
    try:
        status = int(atoms["s"])
    except (KeyError, TypeError, ValueError):
        status = None
    try:
        duration_ms = round(int(atoms["D"]) / 1000, 3)
    except (KeyError, TypeError, ValueError):
        duration_ms = None
    return {"method": atoms.get("m"), "path": atoms.get("U"), "status": status, "duration_ms": duration_ms,
            "remote": atoms.get("h"), "bytes": atoms.get("B"), "user_agent": atoms.get("a")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        access = _access_fields(record)
        if access is not None:
            message = f"{access['method']} {access['path']} {access['status']}"
        else:
            message = record.getMessage()
        doc = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
               "message": message, "pid": record.process}
        doc.update(record_fields(record))
        if access is not None:
            doc.update(access)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        ids = " ".join(f"{k}={fields[k]}" for k in ("job_id", "function_id") if k in fields)
        if not ids:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} [{ids}]{sep}{rest}"


def formatter(fmt: str) -> logging.Formatter:
    """NANOGRID_LOG_FORMAT's formatter: "json" or "text" (Settings.log_format)."""
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(fmt: str) -> None:
    """A plain process's root logger (the scheduler's): INFO and up to stderr, in fmt."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# --- gunicorn -------------------------------------------------------------------------------------

def gunicorn_logconfig(fmt: str) -> dict:
    """gunicorn's logconfig_dict: everything, access lines included, to stderr in our format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"nanogrid": {"()": f"nanogrid.logs.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "nanogrid",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        # No level on gunicorn.error: it keeps gunicorn's --log-level.
        "loggers": {"gunicorn.error": {"handlers": [], "propagate": True},
                    "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True}},
    }
