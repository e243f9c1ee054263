"""Prometheus metrics: the API's requests, the workers' runs and queue, and how they are served.

One scrape must see every process of a service: gunicorn's workers behind the API's /metrics,
a Celery worker's pool children behind its main process's exporter. prometheus_client's
multiprocess mode does that through files in PROMETHEUS_MULTIPROC_DIR, a variable it reads
when it is first imported. So this module imports prometheus_client only inside functions, and
`prepare_multiproc_dir()` runs before anything records: in `nanogrid api|worker` before they
exec gunicorn or celery, and in gunicorn_conf.py (the master, before the app is loaded). A
`celery` process has imported prometheus_client before any NanoGrid code runs (the flower
package's CLI plugin does), so a worker needs the variable in its environment from the start:
`nanogrid worker` sets it; a bare `celery -A nanogrid worker` serves its main process only.
Without the variable (a bare `gunicorn wsgi:app`, tests) a process keeps prometheus_client's
ordinary in-process registry.

API:     nanogrid_http_requests_total{method,route,status}, nanogrid_http_request_duration_seconds
Worker:  nanogrid_runs_total{status,error_type}, nanogrid_run_duration_seconds{status},
         nanogrid_sandbox_overhead_seconds{sandbox}, nanogrid_active_sandboxes,
         nanogrid_messages_dropped_total{reason}, nanogrid_queue_messages{queue,state},
         nanogrid_queue_depth_ok
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Iterator

from celery import bootsteps

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_ENV = "NANOGRID_METRICS_PRIVATE_DIR"  # set beside MULTIPROC_ENV when NanoGrid created the directory
PORT_ENV = "NANOGRID_WORKER_METRICS_PORT"
HOST_ENV = "NANOGRID_WORKER_METRICS_HOST"
DEFAULT_WORKER_PORT = 9808
DEFAULT_WORKER_HOST = "127.0.0.1"
UNMATCHED_ROUTE = "<unmatched>"
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)
OVERHEAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ERROR_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_ERROR_TYPES = 32  # label values a process will create; more distinct types count as "other"


# --- Multiprocess directory ---------------------------------------------------------------------

def prepare_multiproc_dir(environ=None) -> str | None:
    """Give this process tree a fresh private PROMETHEUS_MULTIPROC_DIR unless the operator set one.

    environ: this process's environment by default, or the one a child will be started with.
    Returns the directory in use, or None when prometheus_client is already imported in this
    process without one (too late to switch: the process stays single-process).
    """
    env = os.environ if environ is None else environ
    if env.get(MULTIPROC_ENV):
        return env[MULTIPROC_ENV]
    if env is os.environ and "prometheus_client.values" in sys.modules:
        return None
    path = tempfile.mkdtemp(prefix="nanogrid-metrics-")
    env[MULTIPROC_ENV] = path
    env[PRIVATE_ENV] = path
    return path


def multiproc_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def remove_private_dir() -> None:
    """At the service's exit: remove the directory if NanoGrid created it (never an operator's)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and path == os.environ.get(PRIVATE_ENV):
        shutil.rmtree(path, ignore_errors=True)


def preload() -> None:
    """For gunicorn's master, once the directory is set: child_exit runs inside its SIGCHLD handler,
    and a first import there can interrupt another import and trip over the import lock."""
    import prometheus_client.multiprocess  # noqa: F401


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (gunicorn's child_exit, the worker's scrape-time sweep)."""
    path = multiproc_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def sweep_dead_processes() -> None:
    """Pool children that died without notice (kill -9, OOM) must not leave their gauges behind."""
    path = multiproc_dir()
    if path is None:
        return
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid)
        except PermissionError:
            pass  # alive, someone else's


def registry():
    """What a scrape reads: every process's files in multiprocess mode, else this process."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = multiproc_dir()
    if path is None:
        return REGISTRY
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path)
    return reg


# --- The metrics --------------------------------------------------------------------------------

@functools.cache
def api_metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter("nanogrid_http_requests", "API requests by route (URL rule) and status",
                         ["method", "route", "status"]),
        latency=Histogram("nanogrid_http_request_duration_seconds", "API request latency by route",
                          ["method", "route"], buckets=REQUEST_BUCKETS),
    )


@functools.cache
def worker_metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        runs=Counter("nanogrid_runs", "Runs a worker finished, by final status (SUCCESS, FAILED, or lost: "
                     "the job was finished by someone else meanwhile) and error type", ["status", "error_type"]),
        duration=Histogram("nanogrid_run_duration_seconds", "Wall time of a run in the worker, from claim "
                           "to the recorded result", ["status"], buckets=RUN_BUCKETS),
        overhead=Histogram("nanogrid_sandbox_overhead_seconds", "Wall time of a sandbox call beyond the user "
                           "process's own run time: container create, attach, start, exit wait and removal "
                           "(docker) or process spawn (process); the start latency is part of it",
                           ["sandbox"], buckets=OVERHEAD_BUCKETS),
        active=Gauge("nanogrid_active_sandboxes", "Sandboxes running now on this worker",
                     multiprocess_mode="livesum"),
        dropped=Counter("nanogrid_messages_dropped", "Run messages dropped without running: the job was "
                        "already claimed or finished (duplicate) or does not exist (unknown)", ["reason"]),
    )


_error_types: set[str] = set()


def _error_label(error_type: str | None) -> str:
    if not error_type:
        return ""
    if error_type in _error_types:
        return error_type
    if not ERROR_TYPE.match(error_type) or len(_error_types) >= MAX_ERROR_TYPES:
        return "other"
    _error_types.add(error_type)
    return error_type


def record_run(status: str, error_type: str | None, seconds: float) -> None:
    m = worker_metrics()
    m.runs.labels(status=status, error_type=_error_label(error_type)).inc()
    m.duration.labels(status=status).observe(max(0.0, seconds))


def record_dropped(reason: str) -> None:
    worker_metrics().dropped.labels(reason=reason).inc()


@contextlib.contextmanager
def sandbox_call(kind: str) -> Iterator[SimpleNamespace]:
    """Around services.sandbox.run: counts the sandbox as active and, when the caller sets
    `run_ms` (the user process's own time), observes the overhead beyond it."""
    m = worker_metrics()
    call = SimpleNamespace(run_ms=None)
    started = time.monotonic()
    m.active.inc()
    try:
        yield call
    finally:
        m.active.dec()
        if call.run_ms is not None:
            m.overhead.labels(sandbox=kind).observe(max(0.0, time.monotonic() - started - call.run_ms / 1000))


# --- API ----------------------------------------------------------------------------------------

def register_api(app) -> None:
    """Count every request by its URL rule (not its path: ids would explode the label set) and
    serve /metrics as a plain app route, outside the API blueprint and whatever guards it."""
    from flask import Response, g, request

    m = api_metrics()

    @app.before_request
    def _start_timer():
        g.nanogrid_request_started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.pop("nanogrid_request_started", None)
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        m.requests.labels(method=request.method, route=route, status=str(response.status_code)).inc()
        if started is not None:
            m.latency.labels(method=request.method, route=route).observe(time.perf_counter() - started)
        return response

    def metrics_view():
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(registry()), headers={"Content-Type": content_type})

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])


# --- Worker exporter ----------------------------------------------------------------------------

class QueueDepthCollector:
    """The task queue's depth, read from the broker at scrape time (see nanogrid.status.queue_depth)."""

    def __init__(self, settings):
        self.settings = settings

    def describe(self):
        return []  # collected live; no registration-time call to the broker

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from nanogrid import status

        ok = GaugeMetricFamily("nanogrid_queue_depth_ok", "1 when this scrape could read the queue depth from the broker")
        try:
            depth = status.queue_depth(self.settings)
        except Exception as exc:  # noqa: BLE001 - a broker outage must not break the scrape
            log.warning("cannot read the queue depth: %s", exc)
            ok.add_metric([], 0)
            yield ok
            return
        gauge = GaugeMetricFamily("nanogrid_queue_messages", "Task queue messages: visible (waiting) and "
                                  "in_flight (delivered to a worker, not yet acknowledged)", labels=["queue", "state"])
        gauge.add_metric([depth["queue"], "visible"], depth["visible"])
        gauge.add_metric([depth["queue"], "in_flight"], depth["in_flight"])
        yield gauge
        ok.add_metric([], 1)
        yield ok


class _LiveFiles:
    """The multiprocess files, after sweeping the gauges of pool children that died unannounced."""

    def __init__(self, path: str):
        self.path = path

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        sweep_dead_processes()
        yield from MultiProcessCollector(None, self.path).collect()


def worker_port(environ=None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(PORT_ENV, "")
    try:
        port = int(raw) if raw.strip() else DEFAULT_WORKER_PORT
    except ValueError:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (0 turns the exporter off)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (0 turns the exporter off)")
    return port


class WorkerExporter:
    """The worker's /metrics over HTTP, served by its main process for the whole worker."""

    def __init__(self, settings, port: int, host: str):
        self.settings, self.port, self.host = settings, port, host
        self.server = None

    def start(self) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

        path = multiproc_dir()
        if path is None:
            reg = REGISTRY
            log.warning("%s was not set when the worker started: its exporter shows the main process only, "
                        "not the pool's runs (start workers with `nanogrid worker`)", MULTIPROC_ENV)
        else:
            reg = CollectorRegistry()
            reg.register(_LiveFiles(path))
        reg.register(QueueDepthCollector(self.settings))
        try:
            self.server, _thread = start_http_server(self.port, addr=self.host, registry=reg)
        except OSError as exc:
            # Another worker on this host holds the port: run without an exporter rather than not at all.
            log.error("worker metrics exporter not started on %s:%s: %s", self.host, self.port, exc)
            return
        log.info("worker metrics on http://%s:%s/metrics", self.host, self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsStep(bootsteps.StartStopStep):
    """Runs the exporter beside the worker's pool, in the main process (nanogrid/celery.py adds it)."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.exporter: WorkerExporter | None = None

    def start(self, worker) -> None:
        from nanogrid.worker.tasks import services

        port = worker_port()
        if port == 0:
            return
        self.exporter = WorkerExporter(services().settings, port, os.environ.get(HOST_ENV) or DEFAULT_WORKER_HOST)
        self.exporter.start()

    def stop(self, worker) -> None:
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None


def connect_celery() -> None:
    """From nanogrid/celery.py: the worker's main process removes the private directory
    `nanogrid worker` made for it when it shuts down."""
    from celery import signals

    signals.worker_shutdown.connect(lambda **_: remove_private_dir(), weak=False)
