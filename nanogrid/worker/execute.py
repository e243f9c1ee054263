"""One run, start to finish, inside a worker process.

claim (PENDING -> PROCESSING, conditional) -> fetch code -> prepare the run directory -> sandbox
-> classify -> finish (conditional on still holding the lease). A message whose claim fails was
already taken by someone else (a redelivery or a redispatch) and is dropped: that, with early
ack, is what makes a run execute exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from nanogrid import logs, metrics
from nanogrid.ai import SANDBOX_SOCKET_DIR, SOCKET_NAME
from nanogrid.ai.channel import Channel
from nanogrid.bundles import extract
from nanogrid.errors import NotFound, Unavailable
from nanogrid.functions import code_key
from nanogrid.jobs import FAILED
from nanogrid.sandbox import RUN_FILE, Limits, RunSpec, classify
from nanogrid.services import Services, worker_id

log = logging.getLogger(__name__)
INPUT_FILE = ".nanogrid-input.json"
CODE_FETCH_ATTEMPTS = 3
# The last stderr line of a function that let nanogrid_ai.AIUnavailable escape.
AI_UNAVAILABLE = re.compile(r"^(?:nanogrid_ai\.)?AIUnavailable: (?:the AI node is unavailable: )?(.*)$")


class LeaseKeeper:
    """Renews the job's lease while the run lasts; if renewal is refused (the job was cancelled
    or declared lost), kills the sandbox so the run stops doing work nobody will record."""

    def __init__(self, services: Services, job_id: str, holder: str):
        self.services, self.job_id, self.holder = services, job_id, holder
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        interval = self.services.settings.lease_s / 3
        while not self.stopped.wait(interval):
            try:
                if not self.services.jobs.renew(self.job_id, self.holder):
                    log.warning("lease refused, stopping the sandbox", extra={"job_id": self.job_id})
                    self.services.sandbox.kill(self.job_id)
                    return
            except Exception:  # noqa: BLE001 - a store hiccup must not end the run; the next renewal retries
                log.exception("lease renewal failed", extra={"job_id": self.job_id})


def run(services: Services, job_id: str) -> str:
    with logs.job_scope(job_id):  # every record logged while this run is processed carries its ids
        return _run(services, job_id)


def _run(services: Services, job_id: str) -> str:
    started = time.monotonic()
    holder = worker_id()
    try:
        job = services.jobs.claim(job_id, holder)
    except NotFound:
        log.warning("message for an unknown job dropped", extra={"job_id": job_id})
        metrics.record_dropped("unknown")
        return "unknown"
    if job is None:
        log.info("job already claimed or finished; message dropped", extra={"job_id": job_id})
        metrics.record_dropped("duplicate")
        return "duplicate"
    logs.bind(function_id=job["function_id"], function_version=job["function_version"])
    log.info("run started")
    with LeaseKeeper(services, job_id, holder):
        fields = execute(services, job)
    done = services.jobs.finish(job_id, holder, **fields)
    status = done["status"] if done else "lost"
    error_type = ((done or fields).get("error") or {}).get("type")
    elapsed = time.monotonic() - started
    metrics.record_run(status, error_type, elapsed)
    log.info("run finished: %s%s", status, f" ({error_type})" if error_type else "",
             extra={"status": status, "error_type": error_type, "duration_ms": int(elapsed * 1000)})
    return status


def execute(services: Services, job: dict) -> dict:
    settings = services.settings
    spec = job["spec"]
    limits = Limits.resolve(settings, {"timeout_s": spec.get("timeout_s"), "memory_mb": spec.get("memory_mb"),
                                       **(spec.get("limits") or {})})
    try:
        bundle = fetch_code(services, job["function_id"], job["function_version"])
    except NotFound:
        return failure("code_unavailable", "the function's code is gone (the function was deleted)")
    except Unavailable as exc:
        return failure("code_unavailable", f"the code store did not answer: {exc}")
    with tempfile.TemporaryDirectory(prefix="nanogrid-run-") as tmp:
        run_dir = Path(tmp)
        run_dir.chmod(0o755)
        extract(bundle, run_dir)
        context = {
            "job_id": job["job_id"], "function_id": job["function_id"],
            "function_version": job["function_version"], "deadline": time.time() + limits.timeout_s,
        }
        run_file = {"handler": spec.get("handler"), "env": spec.get("env") or {}, "context": context}
        try:
            # The run's AI channel (nanogrid/ai): the sandbox's only way to the AI node, with budgets.
            channel = Channel(settings).start() if settings.ai_endpoint else None
        except OSError as exc:
            return failure("sandbox_error", f"cannot open the run's AI channel: {exc}")
        try:
            if channel is not None:
                in_sandbox = (str(channel.socket_path) if services.sandbox.kind == "process"
                              else f"{SANDBOX_SOCKET_DIR}/{SOCKET_NAME}")
                run_file["ai"] = {"socket": in_sandbox,
                                  "timeout_s": settings.ai_connect_timeout_s + settings.ai_timeout_s + 5}
            (run_dir / RUN_FILE).write_text(json.dumps(run_file))
            (run_dir / INPUT_FILE).write_text(json.dumps(job["input"]))
            for name in (RUN_FILE, INPUT_FILE):
                os.chmod(run_dir / name, 0o644)
            with metrics.sandbox_call(getattr(services.sandbox, "kind", "other")) as call:  # active sandboxes, overhead
                raw = services.sandbox.run(RunSpec(job["job_id"], job["function_id"], run_dir, spec.get("handler"),
                                                   limits, ai_socket_dir=channel and channel.directory))
                call.run_ms = raw.duration_ms
        except Unavailable as exc:
            return failure("sandbox_error", str(exc))
        finally:
            ai_usage = channel.close() if channel is not None else None
    outcome = classify(raw, limits)
    if ai_usage is not None:
        ai_unavailable(outcome, raw)
    fields = {
        "status": outcome.status, "result": outcome.result, "error": outcome.error, "exit_code": outcome.exit_code,
        "stdout": raw.stdout.decode("utf-8", "replace"), "stderr": raw.stderr.decode("utf-8", "replace"),
        "truncated": raw.output_truncated, "duration_ms": raw.duration_ms,
    }
    if raw.peak_memory_bytes is not None:
        fields["peak_memory_bytes"] = raw.peak_memory_bytes
    if raw.cpu_time_ms is not None:
        fields["cpu_time_ms"] = raw.cpu_time_ms
    if ai_usage is not None:
        fields["ai_usage"] = ai_usage
    return fields


def ai_unavailable(outcome, raw) -> None:
    """A function that let nanogrid_ai.AIUnavailable escape failed because the AI node is down: say so."""
    if outcome.error is None or outcome.error["type"] != "runtime_error":
        return
    lines = raw.stderr.decode("utf-8", "replace").splitlines()
    last_line = next((line for line in reversed(lines) if line.strip()), "")
    match = AI_UNAVAILABLE.match(last_line.strip())
    if match:
        outcome.error = {"type": "ai_unavailable",
                         "message": f"the AI node is unavailable and the function did not handle it: "
                                    f"{match.group(1)[:300]}"}


def fetch_code(services: Services, function_id: str, version: int) -> bytes:
    for attempt in range(CODE_FETCH_ATTEMPTS):
        try:
            return services.functions.code.get(code_key(function_id, version))
        except Unavailable:
            if attempt == CODE_FETCH_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def failure(error_type: str, message: str) -> dict:
    return {"status": FAILED, "error": {"type": error_type, "message": message}}
