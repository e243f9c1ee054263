"""gunicorn settings for `nanogrid api` (gunicorn -c nanogrid/api/gunicorn_conf.py wsgi:app)."""

import os

from nanogrid import logs, metrics
from nanogrid.config import Settings

# Before any worker loads the app (and prometheus_client): one metrics directory for all of them.
metrics.prepare_multiproc_dir(Settings.from_env(), os.environ)
metrics.preload()
_settings = Settings.from_env()

bind = _settings.bind_address
workers = _settings.api_workers
# Threads, because a synchronous run request waits for its job: one blocked request must not
# hold a whole worker process.
worker_class = "gthread"
threads = _settings.api_threads
timeout = int(_settings.max_wait_s) + 30
graceful_timeout = 30
max_requests = 10000
max_requests_jitter = 1000
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
# NANOGRID_LOG_FORMAT=json (default) or text: app, error and access lines alike, on stderr.
logconfig_dict = logs.gunicorn_logconfig(_settings.log_format)


def child_exit(server, worker):
    """A worker is gone: drop its live gauges from the shared metrics directory."""
    metrics.mark_process_dead(_settings, worker.pid)


def on_exit(server):
    metrics.remove_private_dir(_settings)
