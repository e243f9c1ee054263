"""A job's live events: a Redis Stream per job that any API process can read from any point.

Events: `status` on every change of state, `stdout` and `stderr` chunks ({"text"}) as the function
prints them, `result` for each item a streaming handler yields ({"item"}), and `end` once the job
is terminal (readers then send the job's document, read from its record). The stream's entry ids
increase, so a reader that reconnects after id N gets exactly what came after N. The stream is
bounded (MAX_EVENTS, the oldest trimmed first) and expires with the job's other Redis keys; a
finished job whose stream is gone is replayed from its record (see `replay`).

The worker's side (`OutputPublisher`) never makes the run wait: output is buffered and written
every FLUSH_S by a thread of its own; a Redis that does not answer loses live events only (the
record keeps the output).
"""

from __future__ import annotations

import codecs
import json
import logging
import threading
from typing import Any, Iterator

import redis

from nanogrid.errors import Unavailable
from nanogrid.jobs.records import JobRecord

log = logging.getLogger(__name__)

STREAM_TTL_S = 24 * 3600
MAX_EVENTS = 20_000
FLUSH_S = 0.1  # output reaches watchers within this while it flows
STATUS, STDOUT, STDERR, RESULT, END = "status", "stdout", "stderr", "result", "end"


def stream_key(tenant: str, job_id: str) -> str:
    return f"nanogrid:{tenant}:job:{job_id}:events"


def add_to(pipe, tenant: str, job_id: str, kind: str, data: dict) -> None:
    """Queue one event on a Redis pipeline (the job index writes status and end events so)."""
    key = stream_key(tenant, job_id)
    pipe.xadd(key, {"type": kind, "data": json.dumps(data)}, maxlen=MAX_EVENTS, approximate=True)
    pipe.expire(key, STREAM_TTL_S)


class JobEvents:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def append(self, tenant: str, job_id: str, events: list[tuple[str, dict]]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kind, data in events:
                add_to(pipe, tenant, job_id, kind, data)
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def read(self, tenant: str, job_id: str, after: str, block_ms: int, count: int = 200) -> list[tuple[str, str, dict]]:
        """The events after id `after` ("0-0": from the start), waiting up to block_ms for one."""
        try:
            found = self.redis.xread({stream_key(tenant, job_id): after}, count=count, block=block_ms)
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        events = []
        for _stream, entries in found or []:
            for entry_id, fields in entries:
                events.append((_text(entry_id), _text(fields[b"type"]), json.loads(fields[b"data"])))
        return events

    def exists(self, tenant: str, job_id: str) -> bool:
        try:
            return bool(self.redis.exists(stream_key(tenant, job_id)))
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc

    def output(self, tenant: str, job_id: str, cap: int) -> tuple[str, str]:
        """The stdout and stderr streamed so far (at most cap characters together): what a run
        stopped from outside (cancelled, its worker lost) keeps."""
        try:
            entries = self.redis.xrange(stream_key(tenant, job_id))
        except redis.RedisError as exc:
            raise Unavailable(f"redis: {exc}") from exc
        parts: dict[str, list[str]] = {STDOUT: [], STDERR: []}
        left = cap
        for _entry_id, fields in entries:
            kind = _text(fields[b"type"])
            if kind in parts and left > 0:
                text = json.loads(fields[b"data"])["text"][:left]
                parts[kind].append(text)
                left -= len(text)
        return "".join(parts[STDOUT]), "".join(parts[STDERR])


def replay(job: JobRecord, public: dict) -> Iterator[tuple[str, str, dict]]:
    """A finished job's events from its record, for a reader that comes after its stream is gone."""
    yield "0-1", STATUS, {"status": public["status"]}
    if public.get("stdout"):
        yield "0-2", STDOUT, {"text": public["stdout"]}
    if public.get("stderr"):
        yield "0-3", STDERR, {"text": public["stderr"]}
    if job.get("streamed") and isinstance(public.get("result"), list):
        for n, item in enumerate(public["result"]):
            yield f"0-{4 + n}", RESULT, {"item": item}


class OutputPublisher:
    """One run's output as it arrives, written to the job's stream every FLUSH_S, off the run's path."""

    def __init__(self, events: JobEvents, tenant: str, job_id: str):
        self.events, self.tenant, self.job_id = events, tenant, job_id
        self.pending: list[tuple[str, dict]] = []
        self.decoders = {STDOUT: codecs.getincrementaldecoder("utf-8")("replace"),
                         STDERR: codecs.getincrementaldecoder("utf-8")("replace")}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"events-{job_id}", daemon=True)
        self.failed = False

    def __enter__(self) -> "OutputPublisher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self._flush()  # everything printed is in the stream before the job's end event

    def __call__(self, kind: str, value: Any) -> None:
        """The sandbox's on_output: ("stdout" | "stderr", bytes) or ("item", a JSON value)."""
        with self.lock:
            if kind == "item":
                self.pending.append((RESULT, {"item": value}))
                return
            text = self.decoders[kind].decode(value)
            if text:
                if self.pending and self.pending[-1][0] == kind:  # one event per stream and flush
                    self.pending[-1][1]["text"] += text
                else:
                    self.pending.append((kind, {"text": text}))

    def _loop(self) -> None:
        while not self.stopped.wait(FLUSH_S):
            self._flush()

    def _flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            self.events.append(self.tenant, self.job_id, batch)
        except Unavailable as exc:
            if not self.failed:
                self.failed = True
                log.warning("live output not published (%s): watchers miss it; the job keeps it", exc,
                            extra={"job_id": self.job_id})


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
