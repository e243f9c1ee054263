"""The broker as the rest of NanoGrid sees it: send a task, broadcast a control command, ask the
workers, read the queue's depth, check the connection.

Behind it is a Celery app configured for the broker (nanogrid.transport.app), made on first use;
nothing above this module touches Celery's sending or control API.
"""

from __future__ import annotations

import functools

from celery import Celery

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.transport.deadletters import DeadLetter, DeadLetters
from nanogrid.transport.depth import Depth, queue_depth
from nanogrid.transport.app import make_celery


class Broker:
    def __init__(self, settings: Settings):
        self.settings = settings

    @functools.cached_property
    def app(self) -> Celery:
        return make_celery(self.settings)

    def send(self, task: str, args: list, countdown_s: float = 0, queue: str | None = None) -> None:
        """Publish one task message (ignore_result: the job record is the result), to run no
        sooner than countdown_s from now, on the task queue unless another is named; Unavailable
        when the broker refuses it (Celery has retried, per task_publish_retry_policy)."""
        try:
            self.app.send_task(task, args=args, ignore_result=True, countdown=countdown_s or None, queue=queue)
        except Exception as exc:  # noqa: BLE001 - kombu, redis, botocore: every way a publish fails
            raise Unavailable(f"broker: {exc}") from exc

    def publish_raw(self, letter: DeadLetter) -> None:
        """Publish a message body as it was first delivered (a dead letter sent back, on Redis)."""
        try:
            with self.app.producer_or_acquire() as producer:
                producer.publish(letter.body, exchange="", routing_key=self.settings.queue_name,
                                 content_type=letter.content_type, content_encoding=letter.content_encoding,
                                 headers=letter.headers, retry=True, **letter.properties)
        except Exception as exc:  # noqa: BLE001 - as in send
            raise Unavailable(f"broker: {exc}") from exc

    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.settings)

    def broadcast(self, command: str, arguments: dict) -> None:
        """A remote control command to every worker, without waiting for replies."""
        try:
            self.app.control.broadcast(command, arguments=arguments)
        except Exception as exc:  # noqa: BLE001 - as in send
            raise Unavailable(f"broker: {exc}") from exc

    def ask(self, command: str, destination: list[str] | None = None, timeout_s: float = 1.0) -> dict:
        """A remote control command answered by the workers: {worker name: reply}; with a
        destination, it returns as soon as those have all replied."""
        replies = self.app.control.broadcast(command, reply=True, destination=destination, timeout=timeout_s,
                                             limit=len(destination) if destination else None)
        return {name: reply for item in replies or [] for name, reply in item.items()}

    def ping_connection(self) -> None:
        """Raises when the broker cannot be reached (within about two seconds)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def depth(self, *, in_flight: bool = True) -> Depth:
        return queue_depth(self.settings, in_flight=in_flight)

    def close(self) -> None:
        if "app" in self.__dict__:
            self.app.close()
