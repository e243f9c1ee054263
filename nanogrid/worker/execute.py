"""One run, start to finish, inside a worker process.

claim (PENDING -> PROCESSING, conditional) -> fetch code -> its extracted directory (kept per
version: warm sandboxes serve from it) -> the run's request to the sandbox -> classify -> finish
(conditional on still holding the lease). A message whose claim fails was already taken by
someone else (a redelivery or a redispatch) and is dropped: that, with early ack, is what makes
a run execute exactly once.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from nanogrid import functions, layers, logs, metrics
from nanogrid.ai.channel import Channel
from nanogrid.bundles import extract
from nanogrid.errors import NotFound, Unavailable
from nanogrid.functions import code_key, tenant_of
from nanogrid.jobs import ErrorType, Status
from nanogrid.jobs.events import OutputPublisher
from nanogrid.jobs.records import error
from nanogrid.limits import Limits
from nanogrid.outcomes import Outcome, classify
from nanogrid.host import pid_alive
from nanogrid.sandbox import EngineUnavailable, RunSpec
from nanogrid.services import Services, worker_id
from nanogrid.task_names import BUILD_TASK
from nanogrid.worker.layers import LayerCache

log = logging.getLogger(__name__)
CODE_FETCH_ATTEMPTS = 3
# A layer still pending this long after it was asked for has lost its build message.
BUILD_MESSAGE_LOST_S = 60
ENGINE_RETRIES = 1  # a run the engine refused before it started goes back to the queue this often
# ...and beyond that it waits with the worker, for its engine, this often before it fails.
ENGINE_PARKINGS = 3
# Extracted code directories kept per worker process beyond those its warm containers mount.
MAX_CODE_DIRS = 16
CODE_DIR_PREFIX = "nanogrid-code-"
# The last stderr line of a function that let nanogrid_ai.AIUnavailable escape.
AI_UNAVAILABLE = re.compile(r"^(?:nanogrid_ai\.)?AIUnavailable: (?:the AI node is unavailable: )?(.*)$")


class LeaseKeeper:
    """Renews the job's lease while the run lasts; if renewal is refused (the job was cancelled
    or declared lost), kills the sandbox so the run stops doing work nobody will record."""

    def __init__(self, services: Services, job_id: str, holder: str, slot_of: dict | None = None):
        self.services, self.job_id, self.holder = services, job_id, holder
        self.slot_of = slot_of  # a job of a function with max_concurrency: its slot is renewed too
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
                if self.slot_of is not None:
                    self.services.jobs.renew_slot(self.slot_of)
            except Exception:  # noqa: BLE001 - a store hiccup must not end the run; the next renewal retries
                log.exception("lease renewal failed", extra={"job_id": self.job_id})


def run(services: Services, job_id: str, finished: Callable[[dict], None] | None = None) -> str:
    """Process one run message; the job's status (or why nothing was run). finished, if given, gets
    the job's record as the run left it (the caller need not read it again)."""
    with logs.job_scope(job_id):  # every record logged while this run is processed carries its ids
        return _run(services, job_id, finished)


def _run(services: Services, job_id: str, finished: Callable[[dict], None] | None = None) -> str:
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
    layer = job["spec"].get("layer_sha256")
    if layer and layer not in READY_LAYERS:
        waiting = wait_for_layer(services, job_id, holder, layer)
        if waiting is not None:
            return waiting
    bounded = bool(job["spec"].get("max_concurrency"))
    if bounded:  # the function's own bound: wait (PENDING) for a slot a finishing run frees
        job = services.jobs.wait_for_slot(job, holder)
        if job is None:
            metrics.record_dropped("waiting_for_slot")
            return "waiting_for_slot"
    log.info("run started")
    try:
        with LeaseKeeper(services, job_id, holder, slot_of=job if bounded else None):
            try:
                fields = execute(services, job)
            except EngineUnavailable as exc:
                # Nothing of the run started: once, it goes back to the queue, which this worker stops
                # taking from until its engine answers (worker/heartbeat.py); after that it fails.
                refused = job.get("engine_retries", 0)
                if refused < ENGINE_RETRIES and services.jobs.requeue(job_id, holder):
                    log.warning("the sandbox engine does not answer (%s); the run goes back to the queue", exc)
                    metrics.record_dropped("requeued")
                    return "requeued"
                # Refused again: most likely its message came straight back to this worker before
                # its watchdog stopped taking runs. It waits with this worker's main process (this
                # pool process's parent) until the heartbeat finds the engine answering.
                if refused < ENGINE_RETRIES + ENGINE_PARKINGS and services.jobs.requeue(job_id, holder,
                                                                                         publish=False):
                    services.jobs.park_for_engine(job_id, worker_id(os.getppid()))
                    log.warning("the sandbox engine does not answer (%s); the run waits for it", exc)
                    metrics.record_dropped("parked")
                    return "parked"
                fields = failure(ErrorType.SANDBOX_ERROR, str(exc))
        done = services.jobs.finish(job_id, holder, **fields)
    finally:
        if bounded:
            services.jobs.release_slot(job)
    if done and finished is not None:
        finished(done)
    status = str(done["status"]) if done else "lost"  # plain strings: the task's result, shown by Flower
    error_type = (fields.get("error") or {}).get("type")
    elapsed = time.monotonic() - started
    if status == Status.PENDING:  # the retry policy runs it again (JobStore.finish)
        status = "retrying"
    metrics.record_run(status, error_type, elapsed)
    log.info("run finished: %s%s", status, f" ({error_type})" if error_type else "",
             extra={"status": status, "error_type": error_type, "duration_ms": int(elapsed * 1000)})
    return status


def wait_for_layer(services: Services, job_id: str, holder: str, sha: str) -> str | None:
    """None when the run's layer is ready; else the job is given back to wait for its build
    (PENDING: the build dispatches it again when it ends) or, if the build failed, finished."""
    try:
        layer = services.layers.get(sha)
    except NotFound:
        layer = None
    if layer is not None and layer["status"] == layers.Status.READY:
        READY_LAYERS.add(sha)
        return None
    if layer is None or layer["status"] == layers.Status.FAILED:
        reason = layer["error"] if layer else "the function's layer is gone"
        done = services.jobs.finish(job_id, holder, Status.FAILED, error=error(
            ErrorType.BUILD_FAILED, f"the function's requirements could not be installed: {reason}"))
        metrics.record_run(str(Status.FAILED), ErrorType.BUILD_FAILED, 0)
        return str(done["status"]) if done else "lost"
    services.jobs.hold_for_layer(job_id, holder, sha)
    log.info("the function's layer is %s; the run waits for its build", layer["status"])
    if time.time() - layer["updated_at"] > BUILD_MESSAGE_LOST_S and layers.needs_build(layer, time.time()):
        # Nobody took its build message (lost, or its builder died): send it again.
        services.broker.send(BUILD_TASK, [sha], queue=services.settings.build_queue_name)
    if services.layers.get(sha)["status"] in (layers.Status.READY, layers.Status.FAILED):
        services.jobs.release_waiting(sha)  # it ended meanwhile, maybe before this run was held
    metrics.record_dropped("waiting_for_build")
    return "waiting_for_build"


def execute(services: Services, job: dict) -> dict:
    settings = services.settings
    spec = job["spec"]
    limits = Limits.resolve(settings, {"timeout_s": spec.get("timeout_s"), "memory_mb": spec.get("memory_mb"),
                                       **(spec.get("limits") or {})})
    try:
        bundle = fetch_code(services, job["function_id"], job["function_version"], tenant_of(job))
    except NotFound:
        return failure(ErrorType.CODE_UNAVAILABLE, "the function's code is gone (the function was deleted)")
    except Unavailable as exc:
        return failure(ErrorType.CODE_UNAVAILABLE, f"the code store did not answer: {exc}")
    try:
        secrets = {name: services.secrets.get(tenant_of(job), name) for name in spec.get("secrets") or []}
    except NotFound as exc:
        return failure(ErrorType.SECRET_UNAVAILABLE, f"the function's secret {exc} does not exist (any more)")
    except Unavailable as exc:
        return failure(ErrorType.SECRET_UNAVAILABLE, f"the secret store did not answer: {exc}")
    redact = Redactor(secrets)
    sandbox = services.sandbox
    layer_dir = None
    if spec.get("layer_sha256"):
        try:
            layer_dir = layer_folder(services, spec["layer_sha256"])
        except NotFound:
            return failure(ErrorType.CODE_UNAVAILABLE, "the function's layer is gone from the code store")
        except Unavailable as exc:
            return failure(ErrorType.CODE_UNAVAILABLE, f"the code store did not answer: {exc}")
    if getattr(sandbox, "served_versions", False) is None:  # lets warm pools drop deleted or superseded code
        sandbox.watch_functions(functools.partial(served_versions, services))
    # The run's AI channel (nanogrid/ai): the sandbox's only way to the AI node, with budgets. The
    # sandbox opens it where the run can reach it; it is closed here, with the run's usage.
    channel = Channel(settings) if settings.ai_endpoint else None
    sha = hashlib.sha256(bundle).hexdigest()
    try:
        # The run's output, as it arrives, to its live event stream (nanogrid/jobs/events.py).
        with code_dir(services, job, bundle, sha) as directory, \
                OutputPublisher(services.jobs.events, tenant_of(job), job["job_id"]) as publish:
            run_spec = RunSpec(
                job["job_id"], job["function_id"], directory, spec.get("handler"), limits,
                version=job["function_version"], code_sha=sha,
                tenant=tenant_of(job), env=spec.get("env") or {}, input_json=json.dumps(job["input"]),
                ai_channel=channel, ai_timeout_s=settings.ai_connect_timeout_s + settings.ai_timeout_s + 5,
                on_output=redact.wrap(publish), attempt=job.get("attempt", 1), layer_dir=layer_dir,
                init=spec.get("init") or "once", secrets=secrets,
            )
            with metrics.sandbox_call(getattr(sandbox, "kind", "other")) as call:  # active sandboxes, overhead
                raw = sandbox.run(run_spec)
                call.run_ms = raw.duration_ms
    except EngineUnavailable:
        raise  # the caller decides: nothing ran, so it may run again
    except Unavailable as exc:
        return failure(ErrorType.SANDBOX_ERROR, str(exc))
    finally:
        ai_usage = channel.close() if channel is not None else None
    outcome = classify(raw, limits)
    ai_unavailable(outcome, raw)  # the AI node down, or none configured: the same error type
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
    if raw.items is not None:
        fields["streamed"] = True  # a streaming handler: its result is the list of its items
    for name in ("stdout", "stderr", "result", "error"):  # what the run shows of a secret: its name
        fields[name] = redact(fields[name])
    return fields


class Redactor:
    """Replaces each secret's value, wherever a run's output, result or error shows it, with
    `[secret NAME]`. Values shorter than MIN_REDACTED are left: they would blank ordinary text."""

    MIN_REDACTED = 4

    def __init__(self, secrets: dict[str, str]):
        self.values = sorted(((value, f"[secret {name}]") for name, value in secrets.items()
                              if len(value) >= self.MIN_REDACTED), key=lambda pair: -len(pair[0]))

    def __call__(self, value):
        if not self.values:
            return value
        if isinstance(value, str):
            for secret, shown in self.values:
                value = value.replace(secret, shown)
            return value
        if isinstance(value, bytes):  # a chunk of output, maybe ending inside a character: bytes as bytes
            for secret, shown in self.values:
                value = value.replace(secret.encode("utf-8", "surrogatepass"), shown.encode())
            return value
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, dict):
            return {self(key): self(item) for key, item in value.items()}
        return value

    def wrap(self, publish):
        """The live stream's publisher, its chunks redacted (a value split across two chunks is
        not recognised there; the job's stored output is redacted whole)."""
        if not self.values:
            return publish
        return lambda kind, data: publish(kind, self(data))


@contextlib.contextmanager
def code_dir(services: Services, job: dict, bundle: bytes, sha: str) -> Iterator[Path]:
    """The extracted bundle the run serves from: shared by every run of the version in this process
    for an isolated sandbox (it is mounted read-only), a fresh one for the process sandbox (whose
    runs could write into it)."""
    if services.sandbox.isolated:
        key = (tenant_of(job), job["function_id"], job["function_version"], sha)
        in_use = getattr(services.sandbox, "code_dirs_in_use", set)
        yield CODE_DIRS.get(key, bundle, in_use)
        return
    with tempfile.TemporaryDirectory(prefix="nanogrid-run-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        extract(bundle, directory)
        yield directory


class CodeDirs:
    """Extracted bundles, one directory per (tenant, function, version, code sha256), per process.

    A warm container mounts its version's directory for as long as it lives: a directory is removed
    only once no container of this process uses it and more than `limit` are kept (least recently
    used first), and when the process exits.
    """

    def __init__(self, limit: int = MAX_CODE_DIRS):
        self.limit = limit
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.root: Path | None = None
        self.entries: collections.OrderedDict[tuple, Path] = collections.OrderedDict()

    def get(self, key: tuple, bundle: bytes, in_use: Callable[[], set]) -> Path:
        with self.lock:
            if self.pid != os.getpid():  # a forked child keeps its own (its parent may remove theirs)
                self.pid, self.root, self.entries = os.getpid(), None, collections.OrderedDict()
            path = self.entries.get(key)
            if path is not None and path.is_dir():
                self.entries.move_to_end(key)
                return path
            if self.root is None or not self.root.is_dir():
                self.root = self._make_root()
            path = Path(tempfile.mkdtemp(prefix=f"{key[1]}-v{key[2]}-", dir=self.root))
            try:
                path.chmod(0o755)
                extract(bundle, path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            self.entries[key] = path
            if len(self.entries) > self.limit:
                used = in_use()
                for old_key, old_path in list(self.entries.items()):
                    if len(self.entries) <= self.limit:
                        break
                    if old_key != key and old_path not in used:
                        shutil.rmtree(old_path, ignore_errors=True)
                        del self.entries[old_key]
            return path


    def _make_root(self) -> Path:
        """This process's folder (removed when it exits), after removing those of dead processes."""
        for stale in Path(tempfile.gettempdir()).glob(f"{CODE_DIR_PREFIX}*-*"):
            pid = stale.name[len(CODE_DIR_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix=f"{CODE_DIR_PREFIX}{os.getpid()}-"))
        root.chmod(0o755)
        atexit.register(shutil.rmtree, root, True)
        try:  # a prefork child ends with os._exit: atexit would not run there
            from celery.signals import worker_process_shutdown

            worker_process_shutdown.connect(lambda **_: shutil.rmtree(root, True), weak=False)
        except ImportError:
            pass
        return root



CODE_DIRS = CodeDirs()
# The layers this process found ready: a ready layer stays ready (its key names its content).
READY_LAYERS: set[str] = set()


@functools.cache
def layer_cache(root: Path, limit_mb: int) -> LayerCache:
    return LayerCache(root, limit_mb)


def layer_folder(services: Services, sha: str) -> Path:
    """The unpacked layer on this host (fetched from the code store the first time)."""
    settings = services.settings
    cache = layer_cache(settings.layer_cache_dir, settings.layer_cache_mb)
    in_use = getattr(services.sandbox, "layer_dirs_in_use", set)
    return cache.path(sha, lambda: services.layers.store.get(layers.archive_key(sha)), in_use)


def served_versions(services: Services, function_id: str) -> frozenset[int] | None:
    """The versions of the function runs still arrive for (current, aliases'), or None once it is
    deleted (for the warm pools)."""
    try:
        return functions.served_versions(services.functions.get(function_id))
    except NotFound:
        return None


def ai_unavailable(outcome: Outcome, raw) -> None:
    """A function that let nanogrid_ai.AIUnavailable escape failed because the AI node is down: say so."""
    if outcome.error is None or outcome.error["type"] != ErrorType.RUNTIME_ERROR:
        return
    lines = raw.stderr.decode("utf-8", "replace").splitlines()
    last_line = next((line for line in reversed(lines) if line.strip()), "")
    match = AI_UNAVAILABLE.match(last_line.strip())
    if match:
        outcome.error = error(ErrorType.AI_UNAVAILABLE, "the AI node is unavailable and the function did not "
                                                        f"handle it: {match.group(1)[:300]}")


def fetch_code(services: Services, function_id: str, version: int, tenant: str) -> bytes:
    for attempt in range(CODE_FETCH_ATTEMPTS):
        try:
            return services.functions.code.get(code_key(tenant, function_id, version))
        except Unavailable:
            if attempt == CODE_FETCH_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def failure(error_type: ErrorType, message: str) -> dict:
    return {"status": Status.FAILED, "error": error(error_type, message)}
