"""Structured logs: the formatter's fields, and the real API's and worker's output, line by line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from nanogrid import logs
from nanogrid.config import ConfigError, Settings
from nanogrid.task_names import RUN_TASK
from nanogrid.worker import logs as worker_logs
from support.functions import FAILS, OK
from support.stack import Stack
from support.waiting import eventually
SECRET = "s3cr3t-value-that-must-not-appear"


def record(message="hello %s", args=("world",), name="nanogrid.test", **attrs) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    rec.__dict__.update(attrs)
    return rec


def as_json(rec: logging.LogRecord) -> dict:
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    return json.loads(line)


# --- The formatter ----------------------------------------------------------------------------------

def test_basic_fields():
    doc = as_json(record())
    assert doc["message"] == "hello world" and doc["level"] == "INFO" and doc["logger"] == "nanogrid.test"
    assert doc["time"].endswith("Z") and "T" in doc["time"] and isinstance(doc["pid"], int)
    assert "job_id" not in doc


def test_scope_and_extra_carry_the_run_ids_and_nothing_else():
    with logs.scope(job_id="j-1"):
        logs.bind(function_id="fn-1")
        doc = as_json(record(password=SECRET, env={"TOKEN": SECRET}))
        assert doc["job_id"] == "j-1" and doc["function_id"] == "fn-1"
        assert as_json(record(job_id="j-2"))["job_id"] == "j-2"  # the record's own extra wins
        assert SECRET not in json.dumps(doc)
    assert "job_id" not in as_json(record())  # the scope ended with the run


def test_job_scope_joins_the_task_scope_so_celerys_result_line_has_the_function():
    worker_logs.task_started(task_id="t-1", task=type("T", (), {"name": RUN_TASK}), args=["j-9"])
    try:
        with logs.job_scope("j-9"):
            logs.bind(function_id="fn-9")
        # Celery writes "Task ... succeeded" after the task function returned, before task_postrun.
        doc = as_json(record("Task %(name)s[%(id)s] succeeded", ({"name": RUN_TASK, "id": "t-1"},)))
        assert (doc["job_id"], doc["function_id"], doc["task_id"]) == ("j-9", "fn-9", "t-1")
    finally:
        worker_logs.task_ended(task_id="t-1")
    assert logs.current() == {}


def test_celery_receipt_line_names_the_job():
    data = {"id": "t-2", "name": RUN_TASK, "args": "('0b5f4d5e-6a55-4bb0-9a3e-2c1a9d2a9f10',)", "kwargs": "{}"}
    doc = as_json(record("Task %(name)s[%(id)s] received", (data,), name="celery.worker.strategy", data=data))
    assert doc["job_id"] == "0b5f4d5e-6a55-4bb0-9a3e-2c1a9d2a9f10" and doc["task_id"] == "t-2"
    assert doc["message"] == f"Task {RUN_TASK}[t-2] received"


def test_gunicorn_access_line_is_structured_without_query_string():
    atoms = {"m": "GET", "U": "/jobs/abc", "q": f"token={SECRET}", "s": "200", "D": "1500", "h": "127.0.0.1",
             "B": "12", "a": "curl/8", "r": f"GET /jobs/abc?token={SECRET} HTTP/1.1"}
    doc = as_json(record('%(h)s "%(r)s" %(s)s', (atoms,), name="gunicorn.access"))
    assert doc["message"] == "GET /jobs/abc 200"
    assert (doc["method"], doc["path"], doc["status"], doc["duration_ms"]) == ("GET", "/jobs/abc", 200, 1.5)
    assert SECRET not in json.dumps(doc)


def test_exceptions_stay_on_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record(exc_info=sys.exc_info())
    doc = as_json(rec)
    assert "RuntimeError: boom" in doc["exc"]


def test_text_format_and_setting():
    with logs.scope(job_id="j-3", function_id="fn-3"):
        assert logs.TextFormatter().format(record()).endswith("hello world [job_id=j-3 function_id=fn-3]")
    assert Settings.from_env({}).log_format == "json"
    assert Settings.from_env({"NANOGRID_LOG_FORMAT": "TEXT"}).log_format == "text"
    assert isinstance(logs.formatter("text"), logs.TextFormatter) and isinstance(logs.formatter("json"), logs.JsonFormatter)
    with pytest.raises(ConfigError, match="NANOGRID_LOG_FORMAT='xml': expected one of json, text"):
        Settings.from_env({"NANOGRID_LOG_FORMAT": "xml"})


# --- Real processes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(processes, tmp_path_factory, redis_url):
    running = Stack.on_redis(processes, tmp_path_factory.mktemp("logs"), redis_url, db=4,
                             env={"AWS_SECRET_ACCESS_KEY": SECRET})
    yield running
    running.stop()


def json_lines(text: str, after: str) -> list[dict]:
    """Every line from the first one containing `after` on, each of which must be one JSON object
    (but a last line still being written)."""
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    start = next(i for i, line in enumerate(lines) if after in line)
    docs = []
    for line in lines[start:]:
        try:
            docs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return docs


def test_worker_lines_of_a_run_carry_job_and_function(stack):
    ok_fn = stack.client.create("logged-ok", OK, env={"API_TOKEN": SECRET})["function_id"]
    bad_fn = stack.client.create("logged-bad", FAILS)["function_id"]
    jobs = {stack.client.invoke(ok_fn, {"n": 1}, wait_s=60)["job_id"]: ok_fn,
            stack.client.invoke(bad_fn, {}, wait_s=60)["job_id"]: bad_fn}

    def both_tasks_ended() -> list[dict] | None:
        """The worker's lines, once Celery's own line for each task (written just after the job is
        recorded) is among them."""
        docs = json_lines(stack.log("worker"), f"{stack.node} ready.")
        done = {d.get("job_id") for d in docs if d["logger"] == "celery.app.trace"}
        return docs if set(jobs) <= done else None

    docs = eventually(both_tasks_ended, 60, "Celery logs the end of both tasks")
    worker_log = stack.log("worker")
    for job_id, function_id in jobs.items():
        run = [d for d in docs if d.get("job_id") == job_id]
        assert {d["message"] for d in run if d["logger"] == "nanogrid.worker.execute"} >= {"run started"}, run
        task_ids = {d["task_id"] for d in run}
        assert len(task_ids) == 1, run
        # Every line of the task, Celery's included, names the job; all but the broker receipt (the main
        # process logs it before the job record is read) also name the function.
        task_lines = [d for d in docs if d.get("task_id") in task_ids]
        assert task_lines == run and len(run) >= 4, run
        assert [d for d in run if d.get("function_id") != function_id] == \
            [d for d in run if d["logger"] == "celery.worker.strategy"], run
        # A FAILED job is a failed task (Flower shows it so), an expected one: no traceback.
        ended = "succeeded" if function_id == ok_fn else "raised expected: RunFailed"
        assert any(d["message"].startswith(f"Task {RUN_TASK}[") and ended in d["message"] for d in run), run
        assert not any("Traceback" in (d.get("exc") or "") for d in run)
    failed = [d for d in docs if d.get("job_id") in jobs and d.get("status") == "FAILED"]
    assert failed and failed[0]["error_type"] == "runtime_error"
    assert SECRET not in worker_log


def test_api_lines_are_json_access_lines_included(stack):
    stack.client.create("logged-api", OK)

    def created_line_written() -> list[dict] | None:
        """The API's lines, once the access line of the POST (written after its response) is among them."""
        docs = json_lines(stack.log("api"), "Starting gunicorn")
        return docs if any(d["logger"] == "gunicorn.access" and d["method"] == "POST" and d["path"] == "/functions"
                           and d["status"] == 201 for d in docs) else None

    docs = eventually(created_line_written, 60, "the API logs the POST /functions access line")
    assert all({"time", "level", "logger", "message", "pid"} <= d.keys() for d in docs)
    assert SECRET not in stack.log("api")
