"""The worker's consumer: a message it cannot process goes to the dead letters
(nanogrid/transport/deadletters.py) and leaves the queue, instead of being dropped (Celery's
default for an undecodable message) or redelivered until the broker gives up on it (a rejected
message on SQS with a redrive policy, an hour of visibility timeout at a time).

If the dead letters cannot be written either, Celery's own handling applies (SQS then moves the
message to the dead-letter queue itself after maxReceiveCount receives).
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

from nanogrid import metrics
from nanogrid.errors import Unavailable
from nanogrid.services import current as current_services
from nanogrid.transport.deadletters import DeadLetter, DeadLetters

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_decode_error(self, message, exc):
        if not _bury(message, "undecodable", exc):
            super().on_decode_error(message, exc)

    def on_unknown_message(self, body, message):
        if not _bury(message, "unknown_message", None):
            super().on_unknown_message(body, message)

    def on_unknown_task(self, body, message, exc):
        if not _bury(message, "unknown_task", exc):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body, message, exc):
        if not _bury(message, "invalid_task", exc):
            super().on_invalid_task(body, message, exc)


def _bury(message, reason: str, exc: BaseException | None) -> bool:
    """Put the message in the dead letters and take it off the queue; False if that failed."""
    settings = current_services().settings
    sqs_message = (message.delivery_info or {}).get("sqs_message")
    raw = sqs_message["Body"] if sqs_message else message.body
    letter = DeadLetter(raw.encode() if isinstance(raw, str) else bytes(raw), reason,
                        f"{type(exc).__name__}: {exc}"[:1000] if exc is not None else "",
                        content_type=message.content_type, content_encoding=message.content_encoding,
                        headers=dict(message.headers or {}), properties=_portable(message.properties))
    try:
        DeadLetters(settings).put(letter)
    except Unavailable as exc_put:
        log.error("could not move a %s message to the dead letters (%s); leaving it to the broker", reason, exc_put)
        return False
    message.ack()
    metrics.record_dead_letter(reason)
    log.error("message moved to the dead letters: %s%s", reason, f" ({letter.error})" if letter.error else "",
              extra={"task": letter.headers.get("task")})
    return True


def _portable(properties: dict | None) -> dict:
    """The properties a publish can carry again (not the broker's delivery bookkeeping)."""
    return {k: v for k, v in (properties or {}).items() if k in ("correlation_id", "reply_to", "priority")}
