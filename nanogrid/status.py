"""`nanogrid status`: the queue, the workers, the runs in progress and the last failures, at a glance.

It reads what an operator shell can reach with the service's environment: the broker (queue
depth), Celery remote control (which workers answer, via `inspect stats`) and the Redis job
indexes (leases of the runs in progress, the capped list of recent failures kept by
nanogrid.jobs). `--json` prints the same snapshot for scripts. Exit status 1 when a part could
not be read.
"""

from __future__ import annotations

import functools
import json
import time

import redis

from nanogrid.config import Settings

# kombu's Redis transport: a queue is a list under its name, plus one list per priority step,
# and every delivered but unacknowledged message sits in one hash.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED = "unacked"
MAX_ACTIVE_SHOWN = 50


def queue_depth(settings: Settings) -> dict:
    """The task queue's visible (waiting) and in-flight (delivered, not yet acknowledged) messages."""
    if settings.uses_sqs:
        from nanogrid.storage import aws

        attributes = aws.client(settings, "sqs").get_queue_attributes(
            QueueUrl=settings.sqs_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {"broker": "sqs", "queue": settings.queue_name,
                "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
                "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))}
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"queue depth: unsupported broker {settings.broker_url.split(':', 1)[0]}://")
    client = _broker_redis(settings.broker_url)
    queue = settings.queue_name
    pipe = client.pipeline(transaction=False)
    for step in KOMBU_PRIORITY_STEPS:
        pipe.llen(queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}")
    pipe.hvals(KOMBU_UNACKED)
    *lengths, unacked = pipe.execute()
    in_flight = 0
    for value in unacked:
        try:
            in_flight += json.loads(value)[2] == queue  # [message, exchange, routing key]
        except (ValueError, IndexError, TypeError):
            continue
    return {"broker": "redis", "queue": queue, "visible": sum(lengths), "in_flight": in_flight}


@functools.lru_cache(maxsize=4)
def _broker_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)


def workers(settings: Settings, timeout_s: float) -> list[dict]:
    """The workers that answer `inspect stats` within timeout_s."""
    from nanogrid.worker.celery_app import make_celery

    app = make_celery(settings)
    try:
        replies = app.control.inspect(timeout=timeout_s).stats() or {}
        # Whether each sends task events (a monitor sees only tasks that start after they are on).
        events = {}
        if replies:
            for item in app.control.broadcast("task_events", reply=True, destination=list(replies),
                                              timeout=timeout_s):
                events.update({node: reply.get("task_events") for node, reply in item.items()
                               if isinstance(reply, dict)})
    finally:
        app.close()
    found = []
    for name, stats in sorted(replies.items()):
        pool = stats.get("pool") or {}
        found.append({
            "name": name, "pid": stats.get("pid"), "concurrency": pool.get("max-concurrency"),
            "uptime_s": stats.get("uptime"), "tasks_run": sum((stats.get("total") or {}).values()),
            "task_events": events.get(name),
        })
    return found


def active_runs(settings: Settings, now: float) -> dict:
    """The runs holding a lease now (nanogrid.jobs.LEASES), oldest first."""
    from nanogrid.errors import NotFound
    from nanogrid.jobs import LEASES
    from nanogrid.services import Services

    svc = Services(settings)
    leases = svc.redis.zrange(LEASES, 0, -1, withscores=True)
    names: dict[str, str | None] = {}
    runs = []
    for member, lease_until in leases[:MAX_ACTIVE_SHOWN]:
        job_id = member.decode()
        try:
            job = svc.jobs.get(job_id)
        except NotFound:
            continue
        function_id = job["function_id"]
        if function_id not in names:
            try:
                names[function_id] = svc.functions.get(function_id).get("name")
            except NotFound:
                names[function_id] = None
        started = job.get("started_at")
        runs.append({
            "job_id": job_id, "function_id": function_id, "function": names[function_id],
            "worker": job.get("worker_id"), "age_s": round(now - started, 1) if started else None,
            "lease_expires_in_s": round(lease_until - now, 1),
        })
    runs.sort(key=lambda r: -(r["age_s"] or 0))
    return {"count": len(leases), "runs": runs}


def recent_failures(settings: Settings, limit: int) -> list[dict]:
    from nanogrid.jobs import FAILURES
    from nanogrid.services import Services

    out = []
    for raw in Services(settings).redis.lrange(FAILURES, 0, max(0, limit - 1)):
        try:
            failure = json.loads(raw)
        except ValueError:
            continue
        if isinstance(failure.get("finished_at"), (int, float)):
            failure["finished_at"] = _iso(failure["finished_at"])
        out.append(failure)
    return out


def snapshot(settings: Settings, *, timeout_s: float = 2.0, failures: int = 10) -> dict:
    now = time.time()
    doc: dict = {"time": _iso(now), "broker": "sqs" if settings.uses_sqs else "redis",
                 "queue_name": settings.queue_name, "errors": {}}
    parts = (
        ("queue", lambda: queue_depth(settings)),
        ("workers", lambda: workers(settings, timeout_s)),
        ("active_runs", lambda: active_runs(settings, now)),
        ("recent_failures", lambda: recent_failures(settings, failures)),
    )
    for key, read in parts:
        try:
            doc[key] = read()
        except Exception as exc:  # noqa: BLE001 - show what can be read; name what could not
            doc[key] = None
            doc["errors"][key] = f"{type(exc).__name__}: {exc}"
    return doc


def render(doc: dict) -> str:
    lines = [f"NanoGrid status at {doc['time']}  (broker: {doc['broker']}, queue: {doc['queue_name']})", ""]

    def failed(key: str) -> bool:
        if key in doc["errors"]:
            lines.append(f"  unavailable: {doc['errors'][key]}")
            return True
        return False

    lines.append("Queue")
    if not failed("queue"):
        q = doc["queue"]
        lines.append(f"  {q['visible']} visible, {q['in_flight']} in flight")

    lines.append("Workers")
    if not failed("workers"):
        if not doc["workers"]:
            lines.append("  no worker answered")
        for w in doc["workers"]:
            events = {True: "on", False: "off"}.get(w.get("task_events"), "?")
            lines.append(f"  {w['name']}  pid {w['pid']}  concurrency {w['concurrency']}  "
                         f"up {_duration(w['uptime_s'])}  tasks run {w['tasks_run']}  task events {events}")

    active = doc.get("active_runs")
    lines.append("Active runs" + (f" ({active['count']})" if active else ""))
    if not failed("active_runs"):
        if not active["runs"]:
            lines.append("  none")
        for r in active["runs"]:
            function = f"{r['function']} ({r['function_id']})" if r["function"] else r["function_id"]
            lines.append(f"  {r['job_id']}  {function}  running {_duration(r['age_s'])}  on {r['worker']}")

    lines.append("Recent failures")
    if not failed("recent_failures"):
        if not doc["recent_failures"]:
            lines.append("  none")
        for f in doc["recent_failures"]:
            lines.append(f"  {f.get('finished_at') or '?'}  {f['job_id']}  {f['function_id']}  "
                         f"{f['error_type']}: {f['message']}")
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + "Z"


def main(json_output: bool = False, timeout_s: float = 2.0, failures: int = 10) -> int:
    doc = snapshot(Settings.from_env(), timeout_s=timeout_s, failures=failures)
    print(json.dumps(doc, indent=2) if json_output else render(doc))
    return 1 if doc["errors"] else 0
