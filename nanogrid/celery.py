"""The worker's Celery app, found by `celery -A nanogrid worker|inspect|flower`."""

from celery import Celery

from nanogrid.worker import control  # noqa: F401 - registers NanoGrid's remote control commands
from nanogrid.worker import heartbeat, logs, metrics
from nanogrid.worker.reaper import ReaperStep

app = Celery("nanogrid", include=["nanogrid.worker.tasks"])
app.config_from_object("celeryconfig")
app.steps["worker"].add(ReaperStep)
app.steps["worker"].add(heartbeat.HeartbeatStep)  # heartbeats, the engine watchdog, the shutdown grace
app.steps["worker"].add(metrics.MetricsStep)  # the worker's /metrics on NANOGRID_WORKER_METRICS_PORT
logs.connect()  # setup_logging: JSON (or text) lines; task signals: the run's ids on every line
metrics.connect()  # removes the metrics directory `nanogrid worker` made, at shutdown
heartbeat.connect()  # pool processes stop their runs when the shutdown grace is over
