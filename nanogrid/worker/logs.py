"""The worker's logging, in NanoGrid's format (nanogrid.logs), wired to Celery's signals.

Celery's documented `setup_logging` signal hands the root logger over to us; task_prerun and
task_postrun open and close a scope around each task, so every line logged while a run is
processed carries its job id.
"""

from __future__ import annotations

import logging
import sys

from celery import signals
from celery.utils.log import get_multiprocessing_logger

from nanogrid import logs, services
from nanogrid.task_names import RUN_TASK


def setup_logging(loglevel=None, logfile=None, **_kwargs) -> None:
    """Receiver of Celery's setup_logging signal: the worker's root logger, in our format."""
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter(services.current().settings.log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(loglevel or logging.INFO)
    # billiard's pool logger ("Process ... exited with signal 9") does not propagate: give it ours.
    pool_logger = get_multiprocessing_logger()
    if pool_logger is not None:
        for old in list(pool_logger.handlers):
            pool_logger.removeHandler(old)
        pool_logger.addHandler(handler)
        pool_logger.setLevel(logging.ERROR)


_task_scopes: dict[str, object] = {}


def task_started(task_id=None, task=None, args=None, **_kwargs) -> None:
    """task_prerun: a scope for the task, with the job id when it is a run."""
    name = getattr(task, "name", None)
    job_id = str(args[0]) if name == RUN_TASK and args else None
    _task_scopes[task_id] = logs.open_scope(task_id=task_id, task_name=name, job_id=job_id)


def task_ended(task_id=None, **_kwargs) -> None:
    """task_postrun: close the task's scope."""
    token = _task_scopes.pop(task_id, None)
    if token is not None:
        logs.close_scope(token)


def connect() -> None:
    signals.setup_logging.connect(setup_logging, weak=False)
    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
