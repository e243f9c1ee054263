"""The task queue's depth, read from the broker: SQS queue attributes, or kombu's Redis lists.

One place for what `nanogrid status`, the API's backpressure, the worker's metrics and the
scaling publisher all need. Outages are translated into Unavailable here, so no caller meets a
botocore or redis exception.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import redis

from nanogrid import aws
from nanogrid.config import Settings
from nanogrid.errors import Unavailable

# kombu's Redis transport: a queue is a list under its name, plus one list per priority step,
# and every delivered but unacknowledged message sits in one hash.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED = "unacked"


@dataclass(frozen=True)
class Depth:
    broker: str  # "sqs" | "redis"
    queue: str
    visible: int  # waiting for a worker
    in_flight: int | None  # delivered, not yet acknowledged (None: not asked for)

    def document(self) -> dict:
        return {"broker": self.broker, "queue": self.queue, "visible": self.visible, "in_flight": self.in_flight}


def queue_depth(settings: Settings, *, in_flight: bool = True) -> Depth:
    """The task queue's visible messages, and with in_flight its delivered but unacknowledged ones
    (on Redis that reads every unacknowledged message: leave it out where only the backlog counts)."""
    if settings.uses_sqs:
        names = ["ApproximateNumberOfMessages"] + (["ApproximateNumberOfMessagesNotVisible"] if in_flight else [])
        with aws.unavailable_on_outage(f"SQS queue attributes of {settings.queue_name}"):
            attributes = aws.client(settings, "sqs").get_queue_attributes(
                QueueUrl=settings.sqs_queue_url, AttributeNames=names)["Attributes"]
        return Depth("sqs", settings.queue_name, int(attributes.get("ApproximateNumberOfMessages", 0)),
                     int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)) if in_flight else None)
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"queue depth: unsupported broker {settings.broker_url.split(':', 1)[0]}://")
    queue = settings.queue_name
    try:
        pipe = _broker_redis(settings.broker_url).pipeline(transaction=False)
        for step in KOMBU_PRIORITY_STEPS:
            pipe.llen(queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}")
        if in_flight:
            pipe.hvals(KOMBU_UNACKED)
        replies = pipe.execute()
    except redis.RedisError as exc:
        raise Unavailable(f"broker redis: {exc}") from exc
    lengths = replies[:len(KOMBU_PRIORITY_STEPS)]
    unacked = None
    if in_flight:
        unacked = 0
        for value in replies[-1]:
            try:
                unacked += json.loads(value)[2] == queue  # [message, exchange, routing key]
            except (ValueError, IndexError, TypeError):
                continue
    return Depth("redis", queue, sum(lengths), unacked)


@functools.lru_cache(maxsize=4)
def _broker_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)
