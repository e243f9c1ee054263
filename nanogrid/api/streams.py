"""Server-Sent Events of a run: GET /jobs/<id>/events, and a run request that asks for them.

Any API process serves any job's events: they are read from the job's Redis Stream
(nanogrid.jobs.events) with blocking reads, from the start or after the client's Last-Event-ID,
until the `end` event, which carries the job's document read from its record. An idle stream gets
a keep-alive comment every KEEPALIVE_S; a stream open for NANOGRID_MAX_STREAM_S closes, and the
client goes on from its Last-Event-ID (EventSource does so by itself). When the stream holds no end (Redis lost it, or the job
is older than the stream's day) the record decides: a finished job is replayed from its record.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

from flask import Response, stream_with_context

from nanogrid.errors import Unavailable
from nanogrid.jobs import TERMINAL, JobRecord
from nanogrid.jobs.events import END, replay
from nanogrid.services import Services

BLOCK_MS = 1000  # one blocking read; the record is looked at between reads
KEEPALIVE_S = 15.0


def response(events: Iterator[str]) -> Response:
    return Response(stream_with_context(events), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def message(event_id: str, kind: str, data: dict) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_events(svc: Services, job: JobRecord, tenant: str, last_id: str | None) -> Iterator[str]:
    """The job's events after last_id (None: all of them), ending with `end` and its document."""
    jobs, job_id = svc.jobs, job["job_id"]
    closes_at = time.monotonic() + svc.settings.max_stream_s
    after = last_id or "0-0"
    seen_any = last_id is not None and not last_id.startswith("0-")
    idle_since = time.monotonic()
    while True:
        try:
            events = jobs.events.read(tenant, job_id, after, BLOCK_MS)
        except Unavailable:
            events = []
            time.sleep(BLOCK_MS / 1000)
        for event_id, kind, data in events:
            after, seen_any = event_id, True
            if kind == END:
                yield message(event_id, END, jobs.public(jobs.get(job_id, tenant)))
                return
            yield message(event_id, kind, data)
        if time.monotonic() >= closes_at:
            yield ": the stream closes here; reconnect with Last-Event-ID\n\n"
            return
        if events:
            idle_since = time.monotonic()
            continue
        if time.monotonic() - idle_since >= KEEPALIVE_S:
            idle_since = time.monotonic()
            yield ": keep-alive\n\n"
        if jobs.index.fast_status(job_id, tenant) not in (*TERMINAL, None):
            continue  # still running (Redis says): keep reading
        record = jobs.get(job_id, tenant)
        if record["status"] not in TERMINAL:
            continue
        # Finished, and its stream ends without saying so: the record tells the rest.
        try:
            stream_left = jobs.events.exists(tenant, job_id)
        except Unavailable:
            stream_left = False
        if stream_left and jobs.events.read(tenant, job_id, after, 0):
            continue  # its last events arrived meanwhile
        public = jobs.public(record)
        last = after
        if not stream_left or not seen_any:  # nothing to read back: the record's own account
            for event_id, kind, data in replay(record, public):
                if _position(event_id) > _position(after):
                    last = event_id
                    yield message(event_id, kind, data)
        yield message(_next(last), END, public)
        return


def valid_id(event_id: str) -> bool:
    """A Last-Event-ID this API could have sent: a stream entry id, MILLISECONDS-SEQUENCE."""
    parts = event_id.split("-")
    return len(parts) == 2 and all(part.isdigit() for part in parts)


def _position(event_id: str) -> tuple[int, int]:
    ms, sequence = event_id.split("-")
    return int(ms), int(sequence)


def _next(event_id: str) -> str:
    ms, sequence = _position(event_id)
    return f"{ms}-{sequence + 1}"
