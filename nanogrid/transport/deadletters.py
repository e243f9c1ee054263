"""Dead letters: task messages no worker can process (undecodable, of an unknown task, invalid),
kept where an operator can see them and send them back, instead of dropped or redelivered forever.

On SQS they go to the dead-letter queue deploy/terraform makes beside the task queue (the same
queue SQS itself moves a message to once it was received maxReceiveCount times without being
deleted), with their original body, so a redrive sends exactly what came in. On Redis they go to
a list of the broker's Redis, with what kombu needs to publish them again. `nanogrid dlq list`
and `nanogrid dlq redrive` read them; the worker counts them (nanogrid_dead_letters_total).
"""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

import redis

from nanogrid import aws
from nanogrid.config import Settings
from nanogrid.errors import Unavailable

REDIS_KEY = "nanogrid:dead-letters:{queue}"
SQS_BATCH = 10  # receive_message's most
LIST_VISIBILITY_S = 30  # how long a listing hides the letters it holds from another one
REDRIVE_VISIBILITY_S = 300  # a redrive holds them all while it sends them, a thousand at most
SQS_REDRIVE_REASON = "received maxReceiveCount times without being processed (SQS redrive policy)"


@dataclass
class DeadLetter:
    """One message: its raw body as the broker delivered it, and why it is here."""

    body: bytes
    reason: str
    error: str = ""
    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict = field(default_factory=dict)
    properties: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    letter_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def document(self) -> dict:
        """What `nanogrid dlq list` shows."""
        text = self.body.decode("utf-8", "replace")
        return {"id": self.letter_id, "reason": self.reason, "error": self.error,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                "task": self.headers.get("task"), "body": text if len(text) <= 500 else text[:500] + "..."}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "body": base64.b64encode(self.body).decode()})

    @classmethod
    def from_json(cls, text: str | bytes) -> "DeadLetter":
        data = json.loads(text)
        return cls(**{**data, "body": base64.b64decode(data["body"])})


class DeadLetters:
    def __init__(self, settings: Settings):
        self.settings = settings

    def put(self, letter: DeadLetter) -> None:
        if self.settings.uses_sqs:
            attributes = {name: {"DataType": "String", "StringValue": value[:1000]}
                          for name, value in (("reason", letter.reason), ("error", letter.error)) if value}
            with aws.unavailable_on_outage("SQS dead-letter queue"):
                aws.client(self.settings, "sqs").send_message(
                    QueueUrl=self.settings.dead_letter_queue, MessageBody=letter.body.decode("utf-8", "replace"),
                    MessageAttributes=attributes)
            return
        self._redis(lambda client: client.rpush(self._key(), letter.to_json()))

    def list(self, limit: int = 50) -> list[DeadLetter]:
        """Up to limit letters, oldest first."""
        if self.settings.uses_sqs:
            received = self._receive(limit, LIST_VISIBILITY_S)
            # Hidden only while this listing runs: a redrive right after it must find them.
            self._show_again([receipt for _, receipt in received])
            return sorted((letter for letter, _ in received), key=lambda letter: letter.at)
        return [DeadLetter.from_json(item) for item in self._redis(lambda c: c.lrange(self._key(), 0, limit - 1))]

    def depth(self) -> int:
        if self.settings.uses_sqs:
            with aws.unavailable_on_outage("SQS dead-letter queue"):
                attributes = aws.client(self.settings, "sqs").get_queue_attributes(
                    QueueUrl=self.settings.dead_letter_queue, AttributeNames=["ApproximateNumberOfMessages"])
            return int(attributes["Attributes"].get("ApproximateNumberOfMessages", 0))
        return self._redis(lambda client: client.llen(self._key()))

    def redrive(self, publish_raw, limit: int = 1000) -> int:
        """Send up to limit of the letters there now back to the task queue (publish_raw for
        Redis: the broker's kombu producer); how many. Each leaves the dead letters only once it
        was sent; one that fails again and comes back while this runs is not sent a second time."""
        if self.settings.uses_sqs:
            # All taken (hidden) before any is sent: whatever arrives meanwhile is a new letter.
            held, sqs = self._receive(limit, REDRIVE_VISIBILITY_S), aws.client(self.settings, "sqs")
            for letter, receipt in held:
                with aws.unavailable_on_outage("SQS task queue"):
                    sqs.send_message(QueueUrl=self.settings.sqs_queue_url,
                                     MessageBody=letter.body.decode("utf-8", "replace"))
                    sqs.delete_message(QueueUrl=self.settings.dead_letter_queue, ReceiptHandle=receipt)
            return len(held)
        # Taken from the head, while a letter that comes back is pushed at the tail.
        there = min(limit, self._redis(lambda client: client.llen(self._key())))
        for moved in range(there):
            item = self._redis(lambda client: client.lindex(self._key(), 0))
            if item is None:
                return moved
            publish_raw(DeadLetter.from_json(item))
            self._redis(lambda client: client.lrem(self._key(), 1, item))
        return there

    def _receive(self, limit: int, visibility_s: int) -> list[tuple[DeadLetter, str]]:
        sqs, found, seen = aws.client(self.settings, "sqs"), [], set()
        while len(found) < limit:
            with aws.unavailable_on_outage("SQS dead-letter queue"):
                messages = sqs.receive_message(
                    QueueUrl=self.settings.dead_letter_queue, MaxNumberOfMessages=min(SQS_BATCH, limit - len(found)),
                    VisibilityTimeout=visibility_s, MessageAttributeNames=["All"], AttributeNames=["SentTimestamp"],
                    WaitTimeSeconds=0).get("Messages", [])
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                return found
            for message in fresh:
                seen.add(message["MessageId"])
                attributes = message.get("MessageAttributes", {})
                found.append((DeadLetter(
                    message["Body"].encode(), attributes.get("reason", {}).get("StringValue", SQS_REDRIVE_REASON),
                    attributes.get("error", {}).get("StringValue", ""),
                    at=int(message.get("Attributes", {}).get("SentTimestamp", time.time() * 1000)) / 1000,
                    letter_id=message["MessageId"]), message["ReceiptHandle"]))
        return found

    def _show_again(self, receipts: list[str]) -> None:
        sqs = aws.client(self.settings, "sqs")
        for receipt in receipts:  # one by one: a listing holds at most --limit letters
            with aws.unavailable_on_outage("SQS dead-letter queue"):
                sqs.change_message_visibility(QueueUrl=self.settings.dead_letter_queue, ReceiptHandle=receipt,
                                              VisibilityTimeout=0)

    def _key(self) -> str:
        return REDIS_KEY.format(queue=self.settings.queue_name)

    @functools.cached_property
    def _client(self) -> redis.Redis:
        # One for all the calls of this object (a redrive makes three per letter), not a connection each.
        return redis.Redis.from_url(self.settings.broker_url, socket_timeout=5, socket_connect_timeout=2)

    def _redis(self, call):
        try:
            return call(self._client)
        except redis.RedisError as exc:
            raise Unavailable(f"broker redis (dead letters): {exc}") from exc
