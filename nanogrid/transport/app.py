"""The Celery configuration of the broker, derived from Settings: the worker's (celeryconfig.py)
and every sender's (the API, the reaper, the operator tools, through nanogrid.transport.broker).

Why these settings (see the README's "Exactly once" section):
- task_acks_late=False: SQS would redeliver a run that outlives the visibility timeout and it
  would execute twice (celery#5935). Early ack loses nothing because the job record, not the
  message, is the source of truth: an unclaimed PENDING job is redispatched by the reaper.
- worker_prefetch_multiplier=1 with concurrency = sandbox slots: a reserved message burns
  visibility time and blocks an idle worker from taking it.
- Messages carry the job id only; code and input stay in the stores (SQS caps messages).
- Task events off unless NANOGRID_TASK_EVENTS=1: they cost about a fifth of the CPU of a warm run
  (README: Performance). Flower turns them on in the workers it watches (its --enable_events,
  on by default), and `celery -A nanogrid control enable_events` does too.
"""

from __future__ import annotations

from urllib.parse import urlparse

from celery import Celery

from nanogrid.config import Settings
from nanogrid.transport import DYNAMIC_PREFIX, SQS_TRANSPORT


def celery_settings(settings: Settings) -> dict:
    conf = {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        "result_expires": 86400,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 5,
        "redis_socket_timeout": 5,
        "redis_socket_connect_timeout": 2,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 10,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": False,
        "task_default_queue": settings.queue_name,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "broker_connection_retry_on_startup": True,
        # Messages no worker can process go to the dead letters instead of being dropped.
        "worker_consumer": "nanogrid.worker.deadletters:Consumer",
    }
    if settings.uses_sqs:
        endpoint = urlparse(settings.aws_endpoint_url) if settings.aws_endpoint_url else None
        if endpoint is not None:
            # kombu derives the SQS endpoint from the broker URL's host and port.
            conf["broker_url"] = f"sqs://{endpoint.hostname}:{endpoint.port or (443 if endpoint.scheme == 'https' else 80)}"
        # kombu's SQS transport plus broadcast over SNS, so remote control (celery inspect|control)
        # and events (Flower) work; it also creates and cleans up the per-worker and per-caller
        # queues under the IAM-scoped prefix. See nanogrid/transport/sqs.py.
        conf["broker_transport"] = SQS_TRANSPORT
        conf["broker_transport_options"] = {
            "region": settings.aws_region,
            "is_secure": endpoint is None or endpoint.scheme == "https",
            "visibility_timeout": settings.sqs_visibility_timeout,
            "wait_time_seconds": 10,
            "polling_interval": 0.1,
            "predefined_queues": {settings.queue_name: {"url": settings.sqs_queue_url},
                                  settings.build_queue_name: {"url": settings.build_queue}},
            "client-config": {"connect_timeout": 2, "read_timeout": 20, "retries": {"max_attempts": 3}},
            "supports_fanout": True,
            "dynamic_queue_prefix": DYNAMIC_PREFIX,
        }
    else:
        conf["broker_transport_options"] = {"socket_timeout": 5, "socket_connect_timeout": 2, "visibility_timeout": 43200}
    return conf


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings; the worker's own app is built from celeryconfig.py."""
    app = Celery("nanogrid", set_as_current=False)
    app.conf.update(celery_settings(settings))
    return app
