"""Prometheus metrics of the API (/metrics) and of the worker (its exporter), on real processes.

`nanogrid api` (gunicorn, 2 workers by default) and `nanogrid worker` run as an operator runs
them (support.stack.Stack.on_redis: a real redis-server, embedded storage and the process
sandbox); the tests read /metrics with prometheus_client's own parser.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import requests

from nanogrid import metrics
from nanogrid.config import ConfigError, Settings
from nanogrid.services import Services
from support.functions import FAILS, GATED, GATED_TIMEOUT_S, OK, Gate
from support.metrics import samples_of, scrape, scrape_until, total, value
from support.processes import children, command_line
from support.stack import Stack
from support.waiting import eventually


def sandbox_runners(worker_pid: int) -> list[int]:
    """The process sandbox's runners under the worker's pool processes: one per run in progress."""
    return [runner for pool in children(worker_pid) for runner in children(pool) if "runner.py" in command_line(runner)]


@pytest.fixture(scope="module")
def stack(processes, tmp_path_factory, redis_url):
    running = Stack.on_redis(processes, tmp_path_factory.mktemp("metrics"), redis_url, db=3)
    yield running
    running.stop()


# --- In one process: the route label and the fallback registry -------------------------------------

def test_api_counts_by_url_rule_without_multiprocess_dir(make_app, monkeypatch):
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    api = make_app().client

    def count(route: str, status: str) -> float:
        samples = samples_of(api.get("/metrics").get_data(as_text=True))
        return total(samples, "nanogrid_http_requests_total", route=route, status=status, method="GET")

    before_job, before_unmatched = count("/jobs/<job_id>", "404"), count("<unmatched>", "404")
    for _ in range(3):
        assert api.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert api.get("/no/such/path").status_code == 404
    assert count("/jobs/<job_id>", "404") == before_job + 3  # the rule, never the raw path with its id
    assert count("<unmatched>", "404") == before_unmatched + 1


def test_error_type_labels_stay_bounded():
    assert metrics._error_label(None) == ""
    assert metrics._error_label("runtime_error") == "runtime_error"
    assert metrics._error_label("Not A Type!") == "other"
    assert metrics._error_label("x" * 80) == "other"


def test_worker_port_setting():
    assert Settings.from_env({}).worker_metrics_port == 9808
    assert Settings.from_env({"NANOGRID_WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ConfigError, match="NANOGRID_WORKER_METRICS_PORT"):
            Settings.from_env({"NANOGRID_WORKER_METRICS_PORT": bad})


def test_private_dir_only_when_the_operator_set_none(tmp_path):
    env: dict[str, str] = {}
    made = metrics.prepare_multiproc_dir(Settings.from_env(env), env)
    try:
        assert made and Path(made).is_dir() and env[metrics.MULTIPROC_ENV] == env[metrics.PRIVATE_ENV] == made
        assert oct(Path(made).stat().st_mode & 0o777) == "0o700"
        assert Path(made).name.startswith(f"{metrics.PRIVATE_DIR_PREFIX}{os.getpid()}-")  # its owner
    finally:
        os.rmdir(made)
    operator = {metrics.MULTIPROC_ENV: str(tmp_path)}
    assert metrics.prepare_multiproc_dir(Settings.from_env(operator), operator) == str(tmp_path)
    assert metrics.PRIVATE_ENV not in operator


def test_a_dead_owners_private_dir_is_removed_by_the_next_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"{metrics.PRIVATE_DIR_PREFIX}{dead.pid}-"))
    (left / "counter_1.db").write_bytes(b"x")
    mine = Path(tempfile.mkdtemp(prefix=f"{metrics.PRIVATE_DIR_PREFIX}{os.getpid()}-"))
    env: dict[str, str] = {}
    made = metrics.prepare_multiproc_dir(Settings.from_env(env), env)
    try:
        assert not left.exists(), "a killed service's directory stays behind"
        assert mine.is_dir(), "a live process's directory was removed"
    finally:
        os.rmdir(made)
        os.rmdir(mine)


# --- Real processes --------------------------------------------------------------------------------

def test_each_service_gets_its_own_private_metrics_dir(stack):
    api_dir, worker_dir = (stack.procs[name].environ().get(metrics.MULTIPROC_ENV) for name in ("api", "worker"))
    assert api_dir and worker_dir and api_dir != worker_dir
    assert Path(api_dir).is_dir() and Path(worker_dir).is_dir()


def test_run_counters_move_on_the_worker_exporter(stack):
    before = scrape(stack.metrics_url)
    assert value(before, "nanogrid_queue_depth_ok") == 1
    ok, fails = stack.client.create("doubler", OK)["function_id"], stack.client.create("failer", FAILS)["function_id"]
    assert stack.client.invoke(ok, {"n": 21}, wait_s=60)["result"] == 42
    job = stack.client.invoke(fails, {}, wait_s=60)
    assert job["status"] == "FAILED" and job["error"]["type"] == "runtime_error", job

    # The worker counts a run just after recording its job, which the client may see first.
    after = scrape_until(stack.metrics_url, lambda s: total(s, "nanogrid_run_duration_seconds_count") >= 2,
                         "the worker's exporter counts both runs")
    assert value(after, "nanogrid_runs_total", status="SUCCESS", error_type="") >= 1
    assert value(after, "nanogrid_runs_total", status="FAILED", error_type="runtime_error") >= 1
    assert value(after, "nanogrid_run_duration_seconds_bucket", status="FAILED", le="+Inf") >= 1
    assert value(after, "nanogrid_sandbox_overhead_seconds_count", sandbox="process") >= 2
    assert value(after, "nanogrid_active_sandboxes") == 0
    assert value(after, "nanogrid_queue_messages", queue="nanogrid", state="visible") == 0
    assert value(after, "nanogrid_queue_messages", queue="nanogrid", state="in_flight") == 0


def test_active_sandboxes_and_queue_depth_while_busy(stack, tmp_path):
    worker = stack.procs["worker"].pid
    gated = stack.client.create("gated", GATED, timeout_s=GATED_TIMEOUT_S)["function_id"]
    with Gate(tmp_path) as gate:
        # Concurrency 2: two run (each a runner process) and hold their pool processes until the
        # gate opens; the worker reserves more (in flight, not yet acknowledged); the rest wait.
        jobs = [stack.client.invoke(gated, gate.event, wait_s=0)["job_id"] for _ in range(5)]
        eventually(lambda: len(sandbox_runners(worker)) == 2, 60, "two runs are in their sandboxes")
        assert value(scrape(stack.metrics_url), "nanogrid_active_sandboxes") == 2

        def depth() -> tuple[float, float]:
            samples = scrape(stack.metrics_url)
            return (value(samples, "nanogrid_queue_messages", state="visible"),
                    value(samples, "nanogrid_queue_messages", state="in_flight"))

        # The two running messages were acknowledged as their runs started; three are left.
        queued = eventually(lambda: (d := depth())[1] >= 1 and d, 60, "the worker reserves a waiting run")
        assert sum(queued) == 3, queued

        # A pool process killed mid-run must not leave its sandbox counted (the scrape-time sweep).
        running = [job for job in jobs if stack.client.job(job)["status"] == "PROCESSING"]
        holder = Services(stack.settings).jobs.get(running[0])["worker_id"]  # "host:pid" of its pool process
        killed = int(holder.rsplit(":", 1)[1])
        os.kill(killed, signal.SIGKILL)
        # Celery replaces the pool process, which takes a reserved run: two live runs again.
        eventually(lambda: killed not in children(worker) and len(sandbox_runners(worker)) == 2, 60,
                   "the replacement pool process runs the next job")
        assert value(scrape(stack.metrics_url), "nanogrid_active_sandboxes") == 2, "the killed run is still counted"


def test_api_request_counter_sums_over_gunicorn_workers(stack):
    function_id = stack.client.create("counted", OK)["function_id"]
    route = "/functions/<function_id>"

    def counted() -> float:
        return total(scrape(stack.url + "/metrics"), "nanogrid_http_requests_total", route=route, status="200")

    before, sent = counted(), 0

    def pids_serving() -> set[int]:
        return {doc["pid"] for doc in stack.records("api")
                if doc.get("logger") == "gunicorn.access" and doc.get("path") == f"/functions/{function_id}"}

    def both_workers_served() -> bool:
        """Fresh connections from several threads at once, until both gunicorn workers have served the route."""
        nonlocal sent
        threads = [threading.Thread(target=lambda: requests.get(f"{stack.url}/functions/{function_id}", timeout=30))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent += len(threads)
        return len(pids_serving()) >= 2  # an access line is written after its response: a later round sees it

    eventually(both_workers_served, 120, "both gunicorn workers serve the route", interval_s=0.2)
    assert counted() - before >= sent
    latency = scrape(stack.url + "/metrics")
    assert value(latency, "nanogrid_http_request_duration_seconds_count", route=route) >= sent


def test_stopping_removes_the_private_metrics_dirs(stack):
    dirs = [Path(stack.procs[name].environ()[metrics.MULTIPROC_ENV]) for name in ("api", "worker")]
    codes = stack.stop()
    assert codes == {"api": 0, "worker": 0}, stack.log_tail()
    assert not any(d.exists() for d in dirs), dirs
