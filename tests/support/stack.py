"""NanoGrid's own processes, started the way an operator starts them, and driven over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import boto3
import pytest
import redis

from nanogrid import metrics
from nanogrid.client import Client, ClientError
from nanogrid.config import Settings
from nanogrid.storage.provision import ensure_resources
from support.processes import Process, Processes
from support.servers import DUMMY_AWS_ENV, free_port, redis_database, wait_for_http

CLI = [sys.executable, "-m", "nanogrid.cli"]
STARTUP_TIMEOUT_S = 120
PRODUCTION_REGION = "ap-northeast-2"
DEAD_LETTER_AFTER_RECEIVES = 3  # the default of Terraform's dlq_max_receive_count
# A stack of services takes its settings from the test alone, none from the shell running the suite.
NOT_INHERITED = ("NANOGRID_", "SQS_", "REDIS_", "FLOWER_", "AWS_ENDPOINT_URL", metrics.MULTIPROC_ENV)


def clean_environ() -> dict[str, str]:
    """This process's environment without any NanoGrid setting."""
    return {name: value for name, value in os.environ.items() if not name.startswith(NOT_INHERITED)}


def read_exports(path: Path) -> dict[str, str]:
    """The variables of a file of `export NAME=value` lines (nanogrid dev's operator.env)."""
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)


class Stack:
    """One running NanoGrid, in one of three shapes:

    - `Stack.dev`: `nanogrid dev`, the newcomer's command: embedded Redis, SQLite and folders in
      the stack's directory, the Docker sandbox (given the runtime image) or the process sandbox;
    - `Stack.on_redis`: `nanogrid api` and `nanogrid worker` on a database of a real redis-server
      (broker, results and job state), embedded storage, the process sandbox and JSON logs;
    - `Stack.production`: the same two commands as a fleet runs them, on SQS, S3 and DynamoDB
      (moto server), Redis, the GCS emulator and Docker; only the endpoints differ.

    `client` is nanogrid.client.Client on the API; `procs` the running processes by name ("dev",
    "api", "worker"), each with its log. Each shape returns once it is ready to serve a run.
    """

    def __init__(self, processes: Processes, workdir: Path, env: dict[str, str], url: str):
        self._processes = processes
        self.workdir = workdir
        self.env = env
        self.url = url
        self.client = Client(url, timeout_s=150)
        self.procs: dict[str, Process] = {}
        self.node = f"worker-{uuid.uuid4().hex[:8]}@test"  # the worker's Celery node name
        self.operator_env: dict[str, str] = {}  # `nanogrid dev` only: what it wrote to operator.env
        self._stop_signals: dict[str, int] = {}
        self._ports: dict[str, int] = {}  # the ports of the processes started under other names

    # -- the three shapes ------------------------------------------------------------------------

    @classmethod
    def dev(cls, processes: Processes, workdir: Path, runtime_image: Settings | None = None,
            env: dict[str, str] | None = None, runtime: str | None = None) -> "Stack":
        """`nanogrid dev` with its data in workdir, from this shell's environment plus env; the
        Docker sandbox on runtime_image's image when given (the `runtime_image` fixture, which
        builds it), otherwise the process sandbox; runtime: the Docker sandbox's OCI runtime
        (`--runtime`; none: NANOGRID_DOCKER_RUNTIME or runc)."""
        port = free_port()
        environ = {**os.environ, **(env or {})}
        if runtime_image is not None:
            environ["NANOGRID_RUNTIME_IMAGE"] = runtime_image.runtime_image
        stack = cls(processes, workdir, environ, f"http://127.0.0.1:{port}")
        with stack._stopped_on_failure():
            sandbox = "docker" if runtime_image is not None else "process"
            dev = stack.start("dev", [*CLI, "dev", "--sandbox", sandbox, *(["--runtime", runtime] if runtime else []),
                                      "--port", str(port), "--data-dir", str(workdir)], stop_signal=signal.SIGINT)
            # The banner comes once the API is healthy and the worker answered a ping, and after
            # operator.env was written (nanogrid/dev.py): from then on the file is whole.
            dev.wait_for("Press Ctrl-C to stop.", STARTUP_TIMEOUT_S)
            stack.operator_env = read_exports(workdir / "operator.env")
            assert "NANOGRID_REDIS_URL" in stack.operator_env, stack.operator_env
        return stack

    @classmethod
    def on_redis(cls, processes: Processes, workdir: Path, redis_url: str, *, db: int, api: bool = True,
                 worker: bool = True, env: dict[str, str] | None = None) -> "Stack":
        """`nanogrid api` and/or `nanogrid worker` on database db of redis_url's server (flushed
        first; a database of its own, so tests that flush database 0 leave this stack alone),
        embedded storage in workdir, the process sandbox; env: changes to those settings."""
        stack_redis = redis_database(redis_url, db)
        redis.Redis.from_url(stack_redis).flushdb()
        port = free_port()
        environ = {
            **clean_environ(),
            "NANOGRID_REDIS_URL": stack_redis,
            "NANOGRID_BROKER_URL": stack_redis,
            "NANOGRID_DATA_DIR": str(workdir / "data"),
            "NANOGRID_STORAGE": "local",
            "NANOGRID_ARCHIVE": "none",
            "NANOGRID_SANDBOX": "process",
            "NANOGRID_BIND": f"127.0.0.1:{port}",
            "NANOGRID_WORKER_METRICS_PORT": str(free_port()),
            "NANOGRID_LOG_FORMAT": "json",
            **(env or {}),
        }
        stack = cls(processes, workdir, environ, f"http://127.0.0.1:{port}")
        stack._start_services(api, worker)
        return stack

    @classmethod
    def production(cls, processes: Processes, workdir: Path, *, moto_server: str, gcs_emulator: str,
                   redis_url: str, runtime_image: Settings, env: dict[str, str] | None = None) -> "Stack":
        """`nanogrid api` and `nanogrid worker` configured by the founding document's variables:
        a task queue of its own on moto's SQS, its buckets and tables (created as Terraform would),
        Redis from REDIS_HOST/REDIS_PORT, the archive on the GCS emulator, the Docker sandbox on
        runtime_image's image; env: changes to those settings (lease, visibility timeout, ...)."""
        redis_address = urlparse(redis_url)
        port = free_port()
        environ = {
            **clean_environ(),
            **DUMMY_AWS_ENV,
            "AWS_ENDPOINT_URL": moto_server,
            "AWS_REGION": PRODUCTION_REGION,
            # google-cloud-storage treats the variable as a URL, so it needs the scheme.
            "STORAGE_EMULATOR_HOST": f"http://{gcs_emulator}",
            "REDIS_HOST": redis_address.hostname,
            "REDIS_PORT": str(redis_address.port),
            "S3_CODE_BUCKET": "nanogrid-code-bucket",
            "S3_USER_DATA_BUCKET": "nanogrid-user-data-123456789012",
            "GCP_BUCKET_NAME": "nanogrid-archive",
            "NANOGRID_STORAGE": "aws",
            "NANOGRID_SANDBOX": "docker",
            "NANOGRID_RUNTIME_IMAGE": runtime_image.runtime_image,
            "NANOGRID_BIND": f"127.0.0.1:{port}",
            "NANOGRID_WORKER_METRICS_PORT": str(free_port()),
            **(env or {}),
        }
        visibility_s = Settings.from_env(environ).sqs_visibility_timeout
        sqs = boto3.client("sqs", endpoint_url=moto_server, region_name=PRODUCTION_REGION)
        # The task queue and its dead-letter queue, named and linked as deploy/terraform does.
        name = f"nanogrid-task-queue-{uuid.uuid4().hex[:8]}"
        dead_letters = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dead_letters_arn = sqs.get_queue_attributes(QueueUrl=dead_letters,
                                                    AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        environ["SQS_QUEUE_URL"] = sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_letters_arn,
                                         "maxReceiveCount": DEAD_LETTER_AFTER_RECEIVES})})["QueueUrl"]
        # The builds' queue beside it (Settings.build_queue: the task queue's URL plus "-builds").
        sqs.create_queue(QueueName=f"{name}-builds", Attributes={"VisibilityTimeout": str(visibility_s)})
        stack = cls(processes, workdir, environ, f"http://127.0.0.1:{port}")
        ensure_resources(stack.settings)
        stack._start_services(api=True, worker=True)
        return stack

    # -- processes ---------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings the stack's processes read from their environment."""
        return Settings.from_env(self.env)

    @property
    def metrics_url(self) -> str:
        """The worker's Prometheus exporter (on a port `nanogrid dev` chose and names in its banner)."""
        if "dev" in self.procs:
            named = re.search(r"(http://127\.0\.0\.1:\d+/metrics) \(worker\)", self.log("dev"))
            assert named, self.log("dev")
            return named.group(1)
        return f"http://127.0.0.1:{self.env['NANOGRID_WORKER_METRICS_PORT']}/metrics"

    def start(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM,
              env: dict[str, str] | None = None) -> Process:
        """argv as process name, with the stack's environment changed by env."""
        process = self._processes.start(name, argv, {**self.env, **(env or {})}, self.workdir)
        self.procs[name] = process
        self._stop_signals[name] = stop_signal
        return process

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`nanogrid <args>` in an operator's shell of the installation: its environment (on
        `nanogrid dev`, with operator.env on top)."""
        return subprocess.run([*CLI, *args], env={**self.env, **self.operator_env}, capture_output=True, text=True,
                              timeout=120)

    def url_of(self, api: str) -> str:
        """Where the API process of that name listens (`url` is the first one's, "api")."""
        return self.url if api == "api" else f"http://127.0.0.1:{self._ports[api]}"

    def start_api(self, name: str = "api") -> Process:
        """`nanogrid api` (gunicorn); returns once /health answers. Another name is another API
        process of the same installation, on a port of its own that a restart keeps (url_of)."""
        env = {}
        if name != "api":
            env["NANOGRID_BIND"] = f"127.0.0.1:{self._ports.setdefault(name, free_port())}"
        api = self.start(name, [*CLI, "api"], env=env)
        url = self.url_of(name)
        if not wait_for_http(url + "/health", STARTUP_TIMEOUT_S, alive=api.alive):
            pytest.fail(f"the API did not answer /health within {STARTUP_TIMEOUT_S} s\n{api.tail()}")
        return api

    def start_worker(self, concurrency: int = 2, name: str = "worker") -> Process:
        """`nanogrid worker` as node self.node; returns once Celery says it is ready (consuming).
        Starting it again after a crash is what systemd does on the fleet. Another name is another
        worker (its own node name and metrics port), as on a second instance."""
        node, env = self.node, {}
        if name != "worker":
            node = f"{name}-{self.node}"
            env["NANOGRID_WORKER_METRICS_PORT"] = str(self._ports.setdefault(name, free_port()))
        worker = self.start(name, [*CLI, "worker", "-n", node, "--concurrency", str(concurrency)], env=env)
        worker.wait_for(f"{node} ready.", STARTUP_TIMEOUT_S)
        return worker

    def start_builder(self, name: str = "builder") -> Process:
        """`nanogrid builder` (the dependency layers' builds, on their own queue); returns once
        Celery says it is ready."""
        node = f"{name}-{self.node}"
        builder = self.start(name, [*CLI, "builder", "-n", node], env=self.operator_env)
        builder.wait_for(f"{node} ready.", STARTUP_TIMEOUT_S)
        return builder

    def start_scheduler(self, name: str = "scheduler") -> Process:
        """`nanogrid scheduler`, as each controller runs it (on `nanogrid dev`: one more, from an
        operator's shell); returns once it says it started."""
        scheduler = self.start(name, [*CLI, "scheduler"], env=self.operator_env)
        scheduler.wait_for("scheduler started", STARTUP_TIMEOUT_S)
        return scheduler

    def wait_healthy(self) -> None:
        """Return once /health is 200: every component up, a worker's heartbeat among them."""
        api = self.procs["api"]
        if not wait_for_http(self.url + "/health", STARTUP_TIMEOUT_S, alive=api.alive, ok_only=True):
            pytest.fail(f"/health was not 200 within {STARTUP_TIMEOUT_S} s: {self._health()}\n{self.log_tail()}")

    def _health(self) -> str:
        try:
            return json.dumps(self.client.health())
        except ClientError as exc:
            return str(exc)

    def _start_services(self, api: bool, worker: bool) -> None:
        with self._stopped_on_failure():
            if api:
                self.start_api()
            if worker:
                self.start_worker()
            if api and worker:
                self.wait_healthy()  # the worker's first heartbeat has reached the API's view

    def log(self, name: str) -> str:
        return self.procs[name].log()

    def records(self, name: str) -> list[dict]:
        """The JSON log records in name's log (NanoGrid's json log format); other lines are skipped."""
        found = []
        for line in self.log(name).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not a record (Celery's banner, say), or one still being written
            if isinstance(record, dict):
                found.append(record)
        return found

    def lines(self, name: str, *texts: str) -> list[str]:
        """The lines of name's log that contain every one of texts."""
        return [line for line in self.log(name).splitlines() if all(text in line for text in texts)]

    def log_tail(self) -> str:
        return "\n".join(process.tail(3000) for process in self.procs.values())

    def stop(self) -> dict[str, int]:
        """Stop every process as its service manager would (Ctrl-C for `nanogrid dev`, SIGTERM
        otherwise); their exit statuses by name."""
        for name, process in self.procs.items():
            process.send(self._stop_signals[name])
        return {name: process.wait_stopped() for name, process in self.procs.items()}

    @contextlib.contextmanager
    def _stopped_on_failure(self) -> Iterator[None]:
        """Kill what the block started when it fails, so a stack that did not come up does not
        linger beside the next one."""
        try:
            yield
        except BaseException:
            for process in self.procs.values():
                process.kill()
            raise
