"""The worker's Prometheus exporter: /metrics over HTTP from its main process, for the whole worker.

It serves the pool children's figures (nanogrid.metrics, multiprocess mode) and the task queue's
depth, read from the broker at scrape time. A Celery bootstep (added in nanogrid/celery.py) runs it
beside the pool; NANOGRID_WORKER_METRICS_PORT=0 turns it off.
"""

from __future__ import annotations

import logging

from celery import bootsteps, signals

from nanogrid import metrics, services
from nanogrid.config import Settings
from nanogrid.transport.depth import queue_depth
from nanogrid.worker import serves_runs

log = logging.getLogger(__name__)


class QueueDepthCollector:
    """The task queue's depth, read from the broker at scrape time."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def describe(self):
        return []  # collected live; no registration-time call to the broker

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        ok = GaugeMetricFamily("nanogrid_queue_depth_ok", "1 when this scrape could read the queue depth from the broker")
        try:
            depth = queue_depth(self.settings)
        except Exception as exc:  # noqa: BLE001 - a broker outage must not break the scrape
            log.warning("cannot read the queue depth: %s", exc)
            ok.add_metric([], 0)
            yield ok
            return
        gauge = GaugeMetricFamily("nanogrid_queue_messages", "Task queue messages: visible (waiting) and "
                                  "in_flight (delivered to a worker, not yet acknowledged)", labels=["queue", "state"])
        gauge.add_metric([depth.queue, "visible"], depth.visible)
        gauge.add_metric([depth.queue, "in_flight"], depth.in_flight)
        yield gauge
        ok.add_metric([], 1)
        yield ok


class _LiveFiles:
    """The multiprocess files, after sweeping the gauges of pool children that died unannounced."""

    def __init__(self, settings: Settings, path: str):
        self.settings, self.path = settings, path

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        metrics.sweep_dead_processes(self.settings)
        yield from MultiProcessCollector(None, self.path).collect()


class WorkerExporter:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.server = None

    def start(self) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

        settings = self.settings
        path = metrics.multiproc_dir(settings)
        if path is None:
            reg = REGISTRY
            log.warning("%s was not set when the worker started: its exporter shows the main process only, "
                        "not the pool's runs (start workers with `nanogrid worker`)", metrics.MULTIPROC_ENV)
        else:
            reg = CollectorRegistry()
            reg.register(_LiveFiles(settings, path))
        reg.register(QueueDepthCollector(settings))
        host, port = settings.worker_metrics_host, settings.worker_metrics_port
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=reg)
        except OSError as exc:
            # Another worker on this host holds the port: run without an exporter rather than not at all.
            log.error("worker metrics exporter not started on %s:%s: %s", host, port, exc)
            return
        log.info("worker metrics on http://%s:%s/metrics", host, port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsStep(bootsteps.StartStopStep):
    """Runs the exporter beside the worker's pool, in the main process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.enabled = serves_runs(worker)
        self.exporter: WorkerExporter | None = None

    def start(self, worker) -> None:
        settings = services.current().settings
        if settings.worker_metrics_port == 0:
            return
        self.exporter = WorkerExporter(settings)
        self.exporter.start()

    def stop(self, worker) -> None:
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None


def connect() -> None:
    """The worker's main process removes the private directory `nanogrid worker` made for it when
    it shuts down."""
    signals.worker_shutdown.connect(lambda **_: metrics.remove_private_dir(services.current().settings), weak=False)
