"""Prometheus metrics: their definitions, what records them, and the multiprocess directory.

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
ordinary in-process registry. A directory NanoGrid made is named after the process that owns it
and removed when that process exits; those of processes that died without cleaning up (kill -9)
are removed by the next one made on the host.

Serving them: the API's /metrics (nanogrid/api/metrics.py), the worker's exporter
(nanogrid/worker/metrics.py).

API:     nanogrid_http_requests_total{method,route,status}, nanogrid_http_request_duration_seconds
Worker:  nanogrid_runs_total{status,error_type}, nanogrid_run_duration_seconds{status},
         nanogrid_sandbox_overhead_seconds{sandbox}, nanogrid_active_sandboxes,
         nanogrid_messages_dropped_total{reason}, nanogrid_dead_letters_total{reason}, nanogrid_queue_messages{queue,state},
         nanogrid_queue_depth_ok
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, MutableMapping

from nanogrid.config import Settings
from nanogrid.host import pid_alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_ENV = "NANOGRID_METRICS_PRIVATE_DIR"  # set beside MULTIPROC_ENV when NanoGrid created the directory
PRIVATE_DIR_PREFIX = "nanogrid-metrics-"  # then <owner pid>-<random>
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)
OVERHEAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ERROR_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_ERROR_TYPES = 32  # label values a process will create; more distinct types count as "other"


# --- Multiprocess directory ---------------------------------------------------------------------

def prepare_multiproc_dir(settings: Settings, environ: MutableMapping[str, str]) -> str | None:
    """Give a process tree a fresh private PROMETHEUS_MULTIPROC_DIR unless the operator set one.

    environ: os.environ (this process, which will exec the service and so keep its pid), or the
    environment a child will be started with (then the directory is named after this process,
    which waits for the child). Returns the directory in use, or None when prometheus_client is
    already imported in this process without one (too late to switch: it stays single-process).
    """
    if settings.metrics_dir:
        return settings.metrics_dir
    if environ is os.environ and "prometheus_client.values" in sys.modules:
        return None
    remove_abandoned_dirs()
    path = tempfile.mkdtemp(prefix=f"{PRIVATE_DIR_PREFIX}{os.getpid()}-")
    environ[MULTIPROC_ENV] = path
    environ[PRIVATE_ENV] = path
    return path


def remove_abandoned_dirs() -> int:
    """Remove the private directories of processes of this host that are gone; how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{PRIVATE_DIR_PREFIX}*-*"):
        owner = path.name[len(PRIVATE_DIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def multiproc_dir(settings: Settings) -> str | None:
    path = settings.metrics_dir
    return path if path and os.path.isdir(path) else None


def remove_private_dir(settings: Settings) -> None:
    """At the service's exit: remove the directory if NanoGrid created it (never an operator's)."""
    if settings.metrics_dir and settings.metrics_dir == settings.metrics_private_dir:
        shutil.rmtree(settings.metrics_dir, ignore_errors=True)


def preload() -> None:
    """For gunicorn's master, once the directory is set: child_exit runs inside its SIGCHLD handler,
    and a first import there can interrupt another import and trip over the import lock."""
    import prometheus_client.multiprocess  # noqa: F401


def mark_process_dead(settings: Settings, pid: int) -> None:
    """Drop a dead process's live gauges (gunicorn's child_exit, the worker's scrape-time sweep)."""
    path = multiproc_dir(settings)
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def sweep_dead_processes(settings: Settings) -> None:
    """Pool children that died without notice (kill -9, OOM) must not leave their gauges behind."""
    path = multiproc_dir(settings)
    if path is None:
        return
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids:
        if not pid_alive(pid):
            mark_process_dead(settings, pid)


def registry(settings: Settings):
    """What a scrape reads: every process's files in multiprocess mode, else this process."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = multiproc_dir(settings)
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
        dead_letters=Counter("nanogrid_dead_letters", "Messages a worker could not process and moved to the "
                             "dead letters (nanogrid dlq list): undecodable, unknown_message, unknown_task, "
                             "invalid_task", ["reason"]),
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


def record_dead_letter(reason: str) -> None:
    worker_metrics().dead_letters.labels(reason=reason).inc()


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


