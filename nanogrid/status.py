"""`nanogrid status`: the queue, the workers, the runs in progress and the last failures, at a glance.

It reads what an operator shell can reach with the service's environment: the broker (queue
depth; which workers answer `inspect stats`, and whether they send task events) and the jobs
(the runs holding a lease, the capped list of recent failures kept by nanogrid.jobs). `--json`
prints the same snapshot for scripts. Exit status 1 when a part could not be read.
"""

from __future__ import annotations

import json
import time

from nanogrid.config import Settings
from nanogrid.errors import NotFound
from nanogrid.services import Services

MAX_ACTIVE_SHOWN = 50


def workers(svc: Services, timeout_s: float) -> list[dict]:
    """The workers that answer `inspect stats` within timeout_s, and whether each sends task events
    (a monitor such as Flower sees only the tasks that start after they are on)."""
    replies = svc.broker.ask("stats", timeout_s=timeout_s)
    events = svc.broker.ask("task_events", destination=list(replies), timeout_s=timeout_s) if replies else {}
    found = []
    for name, stats in sorted(replies.items()):
        pool = stats.get("pool") or {}
        found.append({
            "name": name, "pid": stats.get("pid"), "concurrency": pool.get("max-concurrency"),
            "uptime_s": stats.get("uptime"), "tasks_run": sum((stats.get("total") or {}).values()),
            "task_events": (events.get(name) or {}).get("task_events"),
        })
    return found


def active_runs(svc: Services, now: float) -> dict:
    """The runs holding a lease now, oldest first."""
    running = svc.jobs.running()
    names: dict[str, str | None] = {}
    runs = []
    for job in running[:MAX_ACTIVE_SHOWN]:
        function_id = job["function_id"]
        if function_id not in names:
            try:
                names[function_id] = svc.functions.get(function_id).get("name")
            except NotFound:
                names[function_id] = None
        started = job.get("started_at")
        runs.append({
            "job_id": job["job_id"], "function_id": function_id, "function": names[function_id],
            "worker": job.get("worker_id"), "age_s": round(now - started, 1) if started else None,
            "lease_expires_in_s": round(job["lease_until"] - now, 1),
        })
    runs.sort(key=lambda r: -(r["age_s"] or 0))
    return {"count": len(running), "runs": runs}


def recent_failures(svc: Services, limit: int) -> list[dict]:
    failures = svc.jobs.recent_failures(limit)
    for failure in failures:
        if isinstance(failure.get("finished_at"), (int, float)):
            failure["finished_at"] = _iso(failure["finished_at"])
    return failures


def snapshot(settings: Settings, *, timeout_s: float = 2.0, failures: int = 10) -> dict:
    now = time.time()
    svc = Services(settings)
    doc: dict = {"time": _iso(now), "broker": "sqs" if settings.uses_sqs else "redis",
                 "queue_name": settings.queue_name, "errors": {}}
    parts = (
        ("queue", lambda: svc.broker.depth().document()),
        ("workers", lambda: workers(svc, timeout_s)),
        ("active_runs", lambda: active_runs(svc, now)),
        ("recent_failures", lambda: recent_failures(svc, failures)),
    )
    for key, read in parts:
        try:
            doc[key] = read()
        except Exception as exc:  # noqa: BLE001 - show what can be read; name what could not
            doc[key] = None
            doc["errors"][key] = f"{type(exc).__name__}: {exc}"
    svc.broker.close()
    return doc


def render(doc: dict) -> str:
    lines = [f"NanoGrid status at {doc['time']}  (broker: {doc['broker']}, queue: {doc['queue_name']})", ""]

    def section(title: str, key: str, rows, empty: str = "none") -> None:
        lines.append(title)
        if key in doc["errors"]:
            lines.append(f"  unavailable: {doc['errors'][key]}")
            return
        shown = list(rows(doc[key]))
        lines.extend(f"  {row}" for row in shown or [empty])

    def worker(w: dict) -> str:
        events = {True: "on", False: "off"}.get(w.get("task_events"), "?")
        return (f"{w['name']}  pid {w['pid']}  concurrency {w['concurrency']}  up {_duration(w['uptime_s'])}  "
                f"tasks run {w['tasks_run']}  task events {events}")

    def run(r: dict) -> str:
        function = f"{r['function']} ({r['function_id']})" if r["function"] else r["function_id"]
        return f"{r['job_id']}  {function}  running {_duration(r['age_s'])}  on {r['worker']}"

    def failure(f: dict) -> str:
        return f"{f.get('finished_at') or '?'}  {f['job_id']}  {f['function_id']}  {f['error_type']}: {f['message']}"

    section("Queue", "queue", lambda q: [f"{q['visible']} visible, {q['in_flight']} in flight"])
    section("Workers", "workers", lambda ws: map(worker, ws), empty="no worker answered")
    active = doc.get("active_runs")
    section("Active runs" + (f" ({active['count']})" if active else ""), "active_runs",
            lambda a: map(run, a["runs"]))
    section("Recent failures", "recent_failures", lambda fs: map(failure, fs))
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
