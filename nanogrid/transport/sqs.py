"""kombu's SQS transport with broadcast, so Celery remote control and events work on SQS.

Celery's remote control (``celery inspect|control``, Flower) and monitoring events need what SQS
lacks: broadcast to every worker, replies sent to the caller, and queues that go away with their
consumer. kombu 5.7 brings SNS-backed fanout exchanges; this subclass adds the rest:

- It declares ``fanout`` (and ``topic``) among its exchange types, which is what makes a Celery
  worker start its remote-control mailbox, and turns ``supports_fanout`` on by default.
- Fanout exchanges (``celery.pidbox``: control commands) and the event exchange (``celeryev``, a
  topic exchange, listed in the ``broadcast_topic_exchanges`` option) are SNS topics; each queue
  bound to one is subscribed to its topic when it is consumed. Every message on such a topic
  reaches every bound queue: routing keys are not filtered, as with Celery on Redis, where the
  event exchange is a fanout exchange for the same reason.
- SQS keeps no binding table, so a worker cannot look up where a caller's reply goes. Replies go
  to the ``reply.<app>.pidbox`` exchange with the caller's id as routing key, and kombu names the
  caller's reply queue ``<id>.reply.<app>.pidbox``: that is the queue a reply is sent to. A
  publisher never creates such a queue: if the caller is gone, the reply is dropped.
- The task queue stays in ``predefined_queues`` (kombu refuses every other queue then). The
  queues Celery creates at run time (names matching the ``dynamic_queues`` patterns: per-worker
  ``<worker>.celery.pidbox``, per-caller ``<id>.reply.celery.pidbox`` and per-monitor
  ``celeryev.<id>``) and the SNS topics are created on demand, named with the ``dynamic_queue_prefix``
  (``nanogrid-fanout-`` by default) so IAM can be scoped to it.
- A process without a kombu event loop (``celery inspect`` in a shell, Flower) deletes the
  messages it receives with the blocking client; kombu's no-ack path needs the event loop.
- Receives made by a blocking ``drain_events(timeout)`` wait no longer than that timeout, so
  ``celery inspect --timeout 1`` returns after about a second rather than a whole long poll,
  and a reply queue is read one message per call, so ``celery inspect -d w1,w2`` returns as
  soon as both replied (kombu counts calls, not messages).

Cleanup. Each process keeps a registry of the dynamic queues it declared:

- While a channel holds a queue, the process writes a heartbeat tag on it (``nanogrid:heartbeat``,
  every ``dynamic_queue_heartbeat_s``), next to ``nanogrid:dynamic`` and ``nanogrid:ttl``.
- When its channel closes, the queue is deleted ``dynamic_queue_release_grace_s`` later unless it
  is declared again meanwhile (a worker restarting its consumer reuses its queue's name, and SQS
  refuses to recreate a name for 60 s after deleting it). When the process exits normally
  (a warm shutdown on SIGTERM, ``celery control shutdown``, the end of ``celery inspect``, Flower
  on SIGTERM), all its queues and their SNS subscriptions are deleted at once.
- A reply queue is released at the end of each call, like a channel's queues when it closes
  (kombu deletes it at once on other virtual transports; RabbitMQ expires it 10 s after its
  last use). A long-lived caller such as Flower gets a new caller id, so a new reply queue, for
  most calls; the grace period lets it reuse the ones it used recently.
- For processes that die without cleaning up, every process that holds dynamic queues sweeps
  every ``dynamic_queue_sweep_interval_s``: a queue tagged ``nanogrid:dynamic`` whose heartbeat is
  older than its ``nanogrid:ttl`` (``dynamic_queue_ttl_s``, at least the queue's x-expires) is
  deleted, and so are SNS subscriptions of the known topics whose queue no longer exists.
  The task queue carries no such tag and is never touched.

The SNS topics themselves (one per broadcast exchange: ``<prefix>celery-pidbox`` and
``<prefix>celeryev``) are shared by all processes and not deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import hashlib
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from time import monotonic
from typing import Any, Iterable, Iterator

from botocore.exceptions import BotoCoreError, ClientError
from kombu.exceptions import ChannelError
from kombu.transport import SQS
from kombu.transport.base import to_rabbitmq_queue_arguments
from kombu.transport.SQS.exceptions import DoesNotExistQueueException, UndefinedQueueException
from kombu.transport.SQS.SNS import SNS
from kombu.transport.virtual.exchange import STANDARD_EXCHANGE_TYPES, TopicExchange

from nanogrid.transport import DYNAMIC_PREFIX

log = logging.getLogger(__name__)

TAG_DYNAMIC = "nanogrid:dynamic"
TAG_HEARTBEAT = "nanogrid:heartbeat"
TAG_TTL = "nanogrid:ttl"

DEFAULTS = {
    "supports_fanout": True,
    "dynamic_queue_prefix": DYNAMIC_PREFIX,
    "dynamic_queues": ("*.pidbox", "celeryev.*"),
    "broadcast_topic_exchanges": ("celeryev",),
    "dynamic_queue_heartbeat_s": 60,
    "dynamic_queue_ttl_s": 600,
    "dynamic_queue_release_grace_s": 75,
    "dynamic_queue_sweep_interval_s": 300,
}

SQS_NAME_MAX = 80
MIN_RETENTION_S, MAX_RETENTION_S = 60, 1209600
DEFAULT_RETENTION_S = 300
DYNAMIC_VISIBILITY_TIMEOUT_S = 60
REPLY_EXCHANGE = re.compile(r"^reply\..+\.pidbox$")
REPLY_QUEUE = re.compile(r"\.reply\..+\.pidbox$")
KEEPER_TICK_S = 5.0
FIRST_SWEEP_DELAY_S = (10.0, 20.0)


def _missing_queue(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return "NonExistentQueue" in code or "QueueDoesNotExist" in code


def _missing_subscription(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in ("NotFound", "NotFoundException", "InvalidParameter")


def shorten(name: str, limit: int = SQS_NAME_MAX) -> str:
    """`name` if it fits SQS's 80 characters, else a prefix of it plus a digest of the whole."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[:limit - len(digest) - 1]}-{digest}"


# --- Sweeping: what is left behind by processes that died ----------------------------------------

def expired(tags: dict, now: float) -> bool:
    """True for a queue tagged as dynamic whose last heartbeat is older than its TTL."""
    if tags.get(TAG_DYNAMIC) != "1":
        return False
    try:
        return now > int(tags[TAG_HEARTBEAT]) + int(tags[TAG_TTL])
    except (KeyError, ValueError):
        return False


def _queue_urls(sqs, prefix: str) -> Iterator[str]:
    kwargs: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
    while True:
        page = sqs.list_queues(**kwargs)
        yield from page.get("QueueUrls", [])
        if not page.get("NextToken"):
            return
        kwargs["NextToken"] = page["NextToken"]


def _queue_exists(sqs, name: str) -> bool:
    try:
        sqs.get_queue_url(QueueName=name)
    except ClientError as exc:
        if _missing_queue(exc):
            return False
        raise
    return True


def sweep(sqs, sns, prefix: str, topic_arns: Iterable[str] = (), keep: Iterable[str] = (),
          now: float | None = None) -> tuple[list[str], list[str]]:
    """Delete abandoned dynamic queues under `prefix` and SNS subscriptions of `topic_arns` whose
    queue is gone. Returns (deleted queue URLs, removed subscription ARNs)."""
    now = time.time() if now is None else now
    keep = set(keep)
    deleted: list[str] = []
    for url in list(_queue_urls(sqs, prefix)):
        if url in keep:
            continue
        with _unless_gone(_missing_queue, f"check or delete {url}"):
            tags = sqs.list_queue_tags(QueueUrl=url).get("Tags") or {}
            if not expired(tags, now):
                continue
            sqs.delete_queue(QueueUrl=url)
            deleted.append(url)
    removed: list[str] = []
    for topic_arn in topic_arns:
        try:
            pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
            subscriptions = [s for page in pages for s in page.get("Subscriptions", [])]
        except ClientError as exc:
            log.warning("sweep: could not list the subscriptions of %s: %s", topic_arn, exc)
            continue
        for sub in subscriptions:
            arn, endpoint = sub.get("SubscriptionArn", ""), sub.get("Endpoint", "")
            queue_name = endpoint.rsplit(":", 1)[-1]
            if sub.get("Protocol") != "sqs" or not arn.startswith("arn:") or not queue_name.startswith(prefix):
                continue
            with _unless_gone(_missing_subscription, f"remove subscription {arn}"):
                # Asked one by one: ListQueues is eventually consistent and may miss a new queue.
                if _queue_exists(sqs, queue_name):
                    continue
                sns.unsubscribe(SubscriptionArn=arn)
                removed.append(arn)
    return deleted, removed


@contextlib.contextmanager
def _unless_gone(gone, what: str) -> Iterator[None]:
    """A sweep step: an error that says the thing is already gone is none; others are logged."""
    try:
        yield
    except ClientError as exc:
        if not gone(exc):
            log.warning("sweep: could not %s: %s", what, exc)


# --- The process-wide registry of the dynamic queues this process holds --------------------------

@dataclass(eq=False)
class _Entry:
    url: str
    sqs: Any
    sns: Any
    ttl_s: int
    holders: set = field(default_factory=set)
    subscriptions: set = field(default_factory=set)
    released_at: float | None = None
    tagged_at: float = float("-inf")


class Registry:
    """The dynamic queues of this process: heartbeats, delayed release, deletion at exit, sweeping."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._fresh: set[str] = set()  # created with their tags, not yet claimed
        self._topics: set[str] = set()
        self._sweep_with: tuple | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._next_sweep = 0.0
        self.closing = False
        self.heartbeat_s = DEFAULTS["dynamic_queue_heartbeat_s"]
        self.grace_s = DEFAULTS["dynamic_queue_release_grace_s"]
        self.sweep_interval_s = DEFAULTS["dynamic_queue_sweep_interval_s"]

    def owns(self, url: str | None) -> bool:
        return url is not None and url in self._entries

    def urls(self) -> set[str]:
        with self._lock:
            return set(self._entries)

    def claim(self, holder: int, url: str, sqs, sns, prefix: str, ttl_s: int, options: dict) -> None:
        with self._lock:
            if self.closing:
                raise ChannelError("the process is exiting: no new dynamic queue")
            self.heartbeat_s = options["dynamic_queue_heartbeat_s"]
            self.grace_s = options["dynamic_queue_release_grace_s"]
            self.sweep_interval_s = options["dynamic_queue_sweep_interval_s"]
            self._sweep_with = (sqs, sns, prefix)
            entry = self._entries.get(url)
            if entry is None:
                entry = self._entries[url] = _Entry(url, sqs, sns, ttl_s)
                if url in self._fresh:
                    self._fresh.discard(url)
                    entry.tagged_at = monotonic()
            entry.holders.add(holder)
            entry.released_at = None
            entry.ttl_s = max(entry.ttl_s, ttl_s)
            due = monotonic() - entry.tagged_at >= self.heartbeat_s
            self._start_keeper()
        if due:
            self._heartbeat(entry)

    def created(self, url: str) -> None:
        """A queue just created with its tags needs no heartbeat yet."""
        with self._lock:
            self._fresh.add(url)

    def add_subscription(self, url: str, subscription_arn: str) -> None:
        entry = self._entries.get(url)
        if entry is not None:
            entry.subscriptions.add(subscription_arn)
        self.add_topic(subscription_arn.rsplit(":", 1)[0])

    def add_topic(self, topic_arn: str) -> None:
        self._topics.add(topic_arn)

    def release(self, holder: int, url: str | None = None) -> None:
        """`holder` (a channel) no longer uses `url`, or any of its queues when url is None."""
        with self._lock:
            for entry in self._entries.values():
                if holder in entry.holders and url in (None, entry.url):
                    entry.holders.discard(holder)
                    if not entry.holders:
                        entry.released_at = monotonic()

    def forget(self, url: str) -> _Entry | None:
        with self._lock:
            return self._entries.pop(url, None)

    # The keeper thread -----------------------------------------------------------------------

    def _start_keeper(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._next_sweep = monotonic() + random.uniform(*FIRST_SWEEP_DELAY_S)
        self._thread = threading.Thread(target=self._run, name="nanogrid-sqs-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(KEEPER_TICK_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the keeper must outlive a failed AWS call
                log.exception("dynamic queue upkeep failed")

    def tick(self, sweep_now: bool = False) -> None:
        now = monotonic()
        with self._lock:
            if self.closing:
                return
            due = [e for e in self._entries.values() if e.holders and now - e.tagged_at >= self.heartbeat_s]
            gone = [e for e in self._entries.values()
                    if not e.holders and e.released_at is not None and now - e.released_at >= self.grace_s]
            for entry in gone:
                del self._entries[entry.url]
        for entry in due:
            self._heartbeat(entry)
        for entry in gone:
            _destroy(entry)
        if sweep_now or now >= self._next_sweep:
            self._next_sweep = now + self.sweep_interval_s * random.uniform(0.8, 1.2)
            self.sweep()

    def sweep(self) -> tuple[list[str], list[str]]:
        if self._sweep_with is None:
            return [], []
        sqs, sns, prefix = self._sweep_with
        deleted, removed = sweep(sqs, sns, prefix, sorted(self._topics), keep=self.urls())
        for url in deleted:
            log.info("deleted the abandoned queue %s", url)
        for arn in removed:
            log.info("removed the SNS subscription %s of a deleted queue", arn)
        return deleted, removed

    def _heartbeat(self, entry: _Entry) -> None:
        entry.tagged_at = monotonic()
        try:
            entry.sqs.tag_queue(QueueUrl=entry.url, Tags={
                TAG_DYNAMIC: "1", TAG_HEARTBEAT: str(int(time.time())), TAG_TTL: str(entry.ttl_s)})
        except ClientError as exc:
            if _missing_queue(exc):
                log.warning("the dynamic queue %s was deleted while in use", entry.url)
            else:
                log.warning("could not refresh the heartbeat of %s: %s", entry.url, exc)
        except BotoCoreError as exc:
            log.warning("could not refresh the heartbeat of %s: %s", entry.url, exc)

    def shutdown(self) -> None:
        """At exit: delete every queue of this process and its subscriptions, now."""
        with self._lock:
            self.closing = True
            entries = list(self._entries.values())
            self._entries.clear()
            self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=KEEPER_TICK_S)
        for entry in entries:
            _destroy(entry)


def _destroy(entry: _Entry) -> None:
    for arn in sorted(entry.subscriptions):
        try:
            entry.sns.unsubscribe(SubscriptionArn=arn)
        except ClientError as exc:
            if not _missing_subscription(exc):
                log.warning("could not remove the SNS subscription %s: %s", arn, exc)
        except BotoCoreError as exc:
            log.warning("could not remove the SNS subscription %s: %s", arn, exc)
    try:
        entry.sqs.delete_queue(QueueUrl=entry.url)
        log.debug("deleted the dynamic queue %s", entry.url)
    except ClientError as exc:
        if not _missing_queue(exc):
            log.warning("could not delete the dynamic queue %s: %s", entry.url, exc)
    except BotoCoreError as exc:
        log.warning("could not delete the dynamic queue %s: %s", entry.url, exc)


registry = Registry()
atexit.register(registry.shutdown)
# A forked child (a prefork pool process) holds none of its parent's queues.
os.register_at_fork(after_in_child=registry._reset)

_holders = count(1)


# --- The transport ---------------------------------------------------------------------------------

class _BroadcastTopicExchange(TopicExchange):
    """A topic exchange that is broadcast over SNS when listed in broadcast_topic_exchanges."""

    def deliver(self, message, exchange, routing_key, **kwargs):
        if self.channel._exchange_is_fanout(exchange):
            self.channel._put_fanout(exchange, message, routing_key, **kwargs)
        else:
            super().deliver(message, exchange, routing_key, **kwargs)


class _Fanout(SNS):
    """kombu's SNS fanout, remembering the topics it uses so the sweeper checks them."""

    def _create_sns_topic(self, exchange_name: str) -> str:
        arn = super()._create_sns_topic(exchange_name)
        registry.add_topic(arn)
        return arn


class Channel(SQS.Channel):
    exchange_types = {**STANDARD_EXCHANGE_TYPES, "topic": _BroadcastTopicExchange}

    def __init__(self, *args, **kwargs):
        self._holder = next(_holders)
        super().__init__(*args, **kwargs)

    # Options ---------------------------------------------------------------------------------

    def _option(self, name: str):
        value = self.transport_options.get(name)
        return DEFAULTS[name] if value is None else value

    @property
    def options(self) -> dict:
        return {name: self._option(name) for name in DEFAULTS}

    @property
    def supports_fanout(self) -> bool:
        return bool(self._option("supports_fanout"))

    @property
    def dynamic_prefix(self) -> str:
        return self._option("dynamic_queue_prefix")

    def _is_dynamic(self, name: str | None) -> bool:
        """A queue (or broadcast exchange) Celery creates at run time, not one of the task queues."""
        if not name or name in self.predefined_queues:
            return False
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self._option("dynamic_queues")):
            return True
        return self._exchange_is_fanout(name)

    def _exchange_is_fanout(self, exchange_name: str) -> bool:
        if not self.supports_fanout:
            return False
        connection = self.connection
        exchange = connection.state.exchanges.get(exchange_name) if connection is not None else None
        kind = exchange.get("type") if exchange else None
        return kind == "fanout" or (kind == "topic" and exchange_name in self._option("broadcast_topic_exchanges"))

    def canonical_queue_name(self, queue_name):
        if self._is_dynamic(queue_name):
            return shorten(self.entity_name(self.dynamic_prefix + queue_name))
        return super().canonical_queue_name(queue_name)

    @property
    def fanout(self) -> SNS:
        if not self._fanout:
            self._fanout = _Fanout(self)
        return self._fanout

    # Clients: kombu hands out per-queue clients for predefined queues only --------------------

    def sqs(self, queue=None):
        return super().sqs(queue if queue in self.predefined_queues else None)

    def asynsqs(self, queue=None):
        return super().asynsqs(queue if queue in self.predefined_queues else None)

    # Dynamic queues ----------------------------------------------------------------------------

    def prepare_queue_arguments(self, arguments, **kwargs):
        # Keeps expires and message_ttl (x-expires, x-message-ttl) for the queue's attributes.
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def queue_declare(self, queue=None, passive=False, **kwargs):
        if not self._is_dynamic(queue):
            return super().queue_declare(queue, passive, **kwargs)
        name = self.canonical_queue_name(queue)
        arguments = kwargs.get("arguments") or {}
        self.connection._declared[queue] = arguments
        if not registry.owns(self._queue_cache.get(name)):
            self._queue_cache.pop(name, None)  # deleted since: resolve or create it again
        ok = super().queue_declare(queue, passive, **kwargs)
        registry.claim(self._holder, self._queue_cache[name], self.sqs(), self.fanout.get_client(),
                       self.dynamic_prefix, self._ttl(arguments), self.options)
        return ok

    def _ttl(self, arguments: dict) -> int:
        expires_s = math.ceil((arguments.get("x-expires") or 0) / 1000)
        return int(max(self._option("dynamic_queue_ttl_s"), expires_s))

    def _resolve_queue_url(self, queue):
        if not self._is_dynamic(queue):
            return super()._resolve_queue_url(queue)
        name = self.canonical_queue_name(queue)
        url = self._queue_cache.get(name)
        if url:
            return url
        try:
            url = self.sqs().get_queue_url(QueueName=name)["QueueUrl"]
        except ClientError as exc:
            if _missing_queue(exc):
                raise DoesNotExistQueueException(f"Queue with name '{name}' doesn't exist in SQS") from None
            raise
        self._queue_cache[name] = url
        return url

    def _new_queue(self, queue, **kwargs):
        if not self._is_dynamic(queue):
            return super()._new_queue(queue, **kwargs)
        try:
            return self._resolve_queue_url(queue)
        except DoesNotExistQueueException:
            if queue not in self.connection._declared:
                raise  # someone else's queue (a reply queue): a publisher never creates it
        if registry.closing:
            raise ChannelError("the process is exiting: no new dynamic queue")
        name = self.canonical_queue_name(queue)
        arguments = self.connection._declared[queue]
        url = self._queue_cache[name] = self._create_dynamic_queue(name, arguments)
        return url

    def _create_dynamic_queue(self, name: str, arguments: dict) -> str:
        ttl_ms = arguments.get("x-message-ttl")
        retention = math.ceil(ttl_ms / 1000) if ttl_ms else DEFAULT_RETENTION_S
        attributes = {
            "VisibilityTimeout": str(DYNAMIC_VISIBILITY_TIMEOUT_S),
            "MessageRetentionPeriod": str(min(max(retention, MIN_RETENTION_S), MAX_RETENTION_S)),
            **(self.transport_options.get("sqs-creation-attributes") or {}),
        }
        tags = {
            **(self.transport_options.get("queue_tags") or {}),
            TAG_DYNAMIC: "1", TAG_HEARTBEAT: str(int(time.time())), TAG_TTL: str(self._ttl(arguments)),
        }
        try:
            url = self.sqs().create_queue(QueueName=name, Attributes=attributes, tags=tags)["QueueUrl"]
        except ClientError as exc:
            if "QueueDeletedRecently" not in exc.response.get("Error", {}).get("Code", ""):
                raise
            raise ChannelError(f"SQS refuses to recreate {name} for 60 s after its deletion: {exc}") from exc
        log.debug("created the dynamic queue %s", url)
        registry.created(url)
        return url

    def _delete(self, queue, exchange=None, *args, **kwargs):
        if not self._is_dynamic(queue):
            return super()._delete(queue, exchange, *args, **kwargs)
        name = self.canonical_queue_name(queue)
        try:
            url = self._resolve_queue_url(queue)
        except DoesNotExistQueueException:
            url = None
        if exchange and self._exchange_is_fanout(exchange):
            try:
                self.fanout.subscriptions.unsubscribe_queue(queue_name=queue, exchange_name=exchange)
            except Exception as exc:  # noqa: BLE001 - the sweeper removes what is left
                log.warning("could not unsubscribe %s from %s: %s", queue, exchange, exc)
        if url is not None:
            entry = registry.forget(url)
            if entry is not None:
                entry.holders.clear()
                _destroy(entry)
            else:
                try:
                    self.sqs().delete_queue(QueueUrl=url)
                except ClientError as exc:
                    if not _missing_queue(exc):
                        raise
        self._queue_cache.pop(name, None)
        self.connection._declared.pop(queue, None)

    def after_reply_message_received(self, queue):
        # kombu deletes the reply queue here; it is released instead, and deleted after the grace
        # period unless the next call of this process (same caller id) declares it again.
        name = self.canonical_queue_name(queue)
        url = self._queue_cache.pop(name, None)
        if url is not None:
            registry.release(self._holder, url)
        self.connection._declared.pop(queue, None)
        self.state.queue_bindings_delete(queue)
        for exchange in self.state.exchanges.values():
            table = exchange.get("table")
            if table:
                table[:] = [binding for binding in table if binding[2] != queue]

    def close(self):
        registry.release(self._holder)
        super().close()

    # Routing -----------------------------------------------------------------------------------

    def _lookup(self, exchange, routing_key, default=None):
        queues = super()._lookup(exchange, routing_key, default)
        if not queues and routing_key and REPLY_EXCHANGE.match(exchange or ""):
            # kombu.pidbox.Mailbox.get_reply_queue: queue f"{oid}.{reply exchange}", routing key oid.
            return [f"{routing_key}.{exchange}"]
        return queues

    def _put(self, queue, message, **kwargs):
        if not self._is_dynamic(queue) or queue in self.connection._declared:
            return super()._put(queue, message, **kwargs)
        # Another process's queue: sent to if it exists, never created, its URL not kept.
        try:
            super()._put(queue, message, **kwargs)
        except DoesNotExistQueueException:
            log.debug("no queue %s any more: message dropped", queue)
        except ClientError as exc:
            if not _missing_queue(exc):
                raise
            log.debug("no queue %s any more: message dropped", queue)
        finally:
            self._queue_cache.pop(self.canonical_queue_name(queue), None)

    def _subscribe_queue_to_fanout_exchange_if_required(self, queue_name: str) -> None:
        try:
            exchange = self._get_exchange_for_queue(queue_name)
        except UndefinedQueueException:
            return
        if not self._exchange_is_fanout(exchange):
            return
        subscription_arn = self.fanout.subscriptions.subscribe_queue(queue_name=queue_name, exchange_name=exchange)
        registry.add_subscription(self._resolve_queue_url(queue_name), subscription_arn)

    # Receiving --------------------------------------------------------------------------------

    def _on_messages_ready(self, queue, qname, messages):
        if self.connection is None:
            return 0  # closed while a receive was in flight (the pidbox channel at shutdown)
        return super()._on_messages_ready(queue, qname, messages)

    def _loop1(self, queue, messages_fetched=None):
        if self.connection is None:
            return None  # closed while a receive was in flight: nothing to poll any more
        return super()._loop1(queue, messages_fetched)

    # Receiving without kombu's event loop ------------------------------------------------------

    def _delete_message(self, queue_name, message):
        if self.hub is not None:
            return super()._delete_message(queue_name, message)
        url = self._new_queue(queue_name)
        try:
            self.sqs(queue=self.canonical_queue_name(queue_name)).delete_message(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        except ClientError as exc:
            log.warning("could not delete a received message from %s: %s", queue_name, exc)

    def _receive_message(self, queue, max_number_of_messages=1, wait_time_seconds=None):
        wait = self.wait_time_seconds if wait_time_seconds is None else wait_time_seconds
        if REPLY_QUEUE.search(queue):
            # kombu.pidbox.Mailbox._collect counts drain_events calls, not messages, to stop once
            # `limit` nodes replied: one reply per call, as on RabbitMQ and Redis.
            max_number_of_messages = 1
        deadline = getattr(self.connection, "_drain_deadline", None)
        if deadline is not None:
            wait = min(wait, max(0, math.ceil(deadline - monotonic())))
        params: dict[str, Any] = {
            "QueueUrl": self._new_queue(queue),
            "MaxNumberOfMessages": max_number_of_messages,
            "WaitTimeSeconds": int(wait),
        }
        attributes = self.get_message_attributes
        if attributes.get("MessageSystemAttributeNames"):
            params["MessageSystemAttributeNames"] = attributes["MessageSystemAttributeNames"]
        if attributes.get("MessageAttributeNames"):
            params["MessageAttributeNames"] = attributes["MessageAttributeNames"]
        return self.sqs(queue=queue).receive_message(**params)


class Transport(SQS.Transport):
    """kombu's SQS transport with fanout (see the module docstring)."""

    Channel = Channel

    implements = SQS.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        self._declared: dict[str, dict] = {}  # dynamic queues declared on this connection -> arguments
        self._drain_deadline: float | None = None

    def drain_events(self, connection, timeout=None):
        self._drain_deadline = None if timeout is None else monotonic() + timeout
        try:
            return super().drain_events(connection, timeout=timeout)
        finally:
            self._drain_deadline = None
