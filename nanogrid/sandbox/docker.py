"""The Docker sandbox: every run gets a fresh, locked-down container of the runtime image.

The container has no network, a read-only root, a small noexec /tmp, no capabilities and an
unprivileged user; memory, CPU, processes, open files and file size are capped by the kernel.
The worker enforces the wall-clock deadline and the output cap itself, by killing the container,
and always removes the container afterwards: leftovers are found by their nanogrid.job label.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import docker
import docker.errors
from docker.types import LogConfig, Mount, Ulimit
from requests.exceptions import RequestException

from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox import LABEL_FUNCTION, LABEL_JOB, LABEL_WORKER, FrameReader, RawRun, RunSpec

log = logging.getLogger(__name__)

BUILD_HINT = "run `nanogrid image build`"
CODE_MOUNT = "/code"
RUNNER_COMMAND = ["python3", "-I", "-B", "/opt/nanogrid/runner.py", CODE_MOUNT]
SANDBOX_USER = "65534:65534"
MiB = 1024 * 1024
API_TIMEOUT_S = 60
# After the output stream ends the container is exiting; longer than this means it is stuck.
EXIT_WAIT_S = 10
RUNNER_STDERR_KEEP = 64 * 1024
SIGKILL_EXIT_CODE = 128 + 9
DOCKER_ERRORS = (docker.errors.DockerException, RequestException)


def connect(timeout: float = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the local dockerd (DOCKER_HOST etc. honoured), or Unavailable."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DOCKER_ERRORS as exc:
        raise Unavailable(f"cannot reach dockerd: {exc}") from exc
    return client


class _Supervisor:
    """Kills a run's container at most once and remembers why, unless the run already ended."""

    def __init__(self, container):
        self.container = container
        self.lock = threading.Lock()
        self.ended = False
        self.reason: str | None = None  # "timeout", "output" or "cancel"

    def kill(self, reason: str, wait: bool = True) -> None:
        with self.lock:
            if self.ended or self.reason is not None:
                return
            self.reason = reason
        if wait:
            self._send_kill()
        else:
            # dockerd answers a kill only once the container's output is drained, so the thread
            # reading that output must not be the one waiting for the answer.
            threading.Thread(target=self._send_kill, daemon=True).start()

    def end(self) -> None:
        with self.lock:
            self.ended = True

    def _send_kill(self) -> None:
        try:
            self.container.kill()
        except docker.errors.APIError as exc:
            # 409: the container exited on its own just before the kill, so nothing was cut short.
            if exc.status_code == 409:
                with self.lock:
                    self.reason = None
            else:
                log.warning("cannot kill container %s: %s", self.container.id[:12], exc)
        except DOCKER_ERRORS as exc:
            log.warning("cannot kill container %s: %s", self.container.id[:12], exc)


class DockerSandbox:
    kind = "docker"
    isolated = True

    def __init__(self, settings: Settings, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        self._client: docker.DockerClient | None = None
        self._client_pid: int | None = None
        self._running: dict[str, _Supervisor] = {}

    @property
    def client(self) -> docker.DockerClient:
        # A client's connection pool must not cross a fork: the prefork worker makes one per child.
        if self._client is None or self._client_pid != os.getpid():
            self._client = connect()
            self._client_pid = os.getpid()
        return self._client

    def ping(self) -> None:
        try:
            self.client.ping()
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot reach dockerd: {exc}") from exc

    def run(self, spec: RunSpec) -> RawRun:
        container = self._create(spec)
        try:
            return self._supervise(container, spec)
        finally:
            self._remove(container)

    def kill(self, job_id: str) -> bool:
        """Kill the container running job_id, from any process; True if one was running."""
        supervisor = self._running.get(job_id)
        if supervisor is not None:
            supervisor.kill("cancel")
        try:
            running = self.client.api.containers(filters={"label": f"{LABEL_JOB}={job_id}"})
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot list containers: {exc}") from exc
        for summary in running:
            try:
                self.client.api.kill(summary["Id"])
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):  # already gone or already stopped
                    raise Unavailable(f"cannot kill container {summary['Id'][:12]}: {exc}") from exc
        return bool(running) or supervisor is not None

    def remove_containers(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Force-remove containers labelled with a job in job_ids and not in keep.

        None means no restriction, so keep={...} alone removes every job container on this
        dockerd except those, whichever worker started them.
        """
        try:
            containers = self.client.api.containers(all=True, filters={"label": LABEL_JOB})
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot list containers: {exc}") from exc
        removed = 0
        for summary in containers:
            job_id = (summary.get("Labels") or {}).get(LABEL_JOB)
            if (job_ids is not None and job_id not in job_ids) or (keep is not None and job_id in keep):
                continue
            try:
                self.client.api.remove_container(summary["Id"], force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except DOCKER_ERRORS as exc:
                raise Unavailable(f"cannot remove container {summary['Id'][:12]}: {exc}") from exc
        return removed

    def _create(self, spec: RunSpec):
        limits = spec.limits
        options = dict(
            image=self.settings.runtime_image,
            command=RUNNER_COMMAND,
            user=SANDBOX_USER,
            working_dir=CODE_MOUNT,
            environment={"HOME": "/tmp", "LANG": "C.UTF-8"},
            labels={LABEL_JOB: spec.job_id, LABEL_FUNCTION: spec.function_id, LABEL_WORKER: self.worker_id},
            mounts=[Mount(target=CODE_MOUNT, source=str(spec.run_dir.resolve()), type="bind", read_only=True)],
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777"},
            mem_limit=limits.memory_mb * MiB,
            memswap_limit=limits.memory_mb * MiB,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            ulimits=[
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="fsize", soft=limits.file_size_mb * MiB, hard=limits.file_size_mb * MiB),
                Ulimit(name="core", soft=0, hard=0),
            ],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            init=True,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            auto_remove=False,  # its exit state is read after the run; run() removes it
        )
        if self.settings.docker_runtime:
            options["runtime"] = self.settings.docker_runtime
        try:
            return self.client.containers.create(**options)
        except docker.errors.ImageNotFound as exc:
            raise Unavailable(f"the runtime image {self.settings.runtime_image} does not exist; {BUILD_HINT}") from exc
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot create the sandbox container: {exc}") from exc

    def _supervise(self, container, spec: RunSpec) -> RawRun:
        limits = spec.limits
        raw = RawRun()
        frames = FrameReader(limits.output_bytes)
        runner_stderr = bytearray()
        supervisor = _Supervisor(container)
        deadline = threading.Timer(limits.timeout_s, supervisor.kill, args=("timeout",))
        deadline.daemon = True
        try:
            # Attached before the start, so not a byte of output is missed however fast the run.
            stream = container.attach(stdout=True, stderr=True, stream=True, demux=True)
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot attach to the sandbox container: {exc}") from exc
        try:
            container.start()
        except DOCKER_ERRORS as exc:
            stream.close()
            raise Unavailable(f"cannot start the sandbox container: {exc}") from exc
        started = time.monotonic()
        deadline.start()
        self._running[spec.job_id] = supervisor
        try:
            for stdout, stderr in stream:
                if stdout:
                    frames.feed(stdout)
                    if frames.over_cap:
                        supervisor.kill("output", wait=False)
                if stderr:
                    runner_stderr += stderr
                    del runner_stderr[:-RUNNER_STDERR_KEEP]
        finally:
            supervisor.end()
            deadline.cancel()
            stream.close()
            self._running.pop(spec.job_id, None)
        raw.duration_ms = int((time.monotonic() - started) * 1000)
        frames.fill(raw)
        raw.timed_out = supervisor.reason == "timeout"
        state = self._final_state(container)
        if state is None:
            runner_stderr += b"\n[nanogrid] the container was removed while the run was in progress"
        else:
            raw.runner_exit_code, raw.oom_killed = state["ExitCode"], bool(state.get("OOMKilled"))
        raw.runner_stderr = bytes(runner_stderr[-RUNNER_STDERR_KEEP:])
        # A SIGKILL this run did not send, with no OOM and no exit report from the runner: someone
        # called kill(job_id) from another process (or `docker kill`ed it), which is a cancellation.
        killed_from_outside = (supervisor.reason is None and frames.exit is None and not raw.oom_killed
                               and raw.runner_exit_code == SIGKILL_EXIT_CODE)
        raw.cancelled = supervisor.reason == "cancel" or killed_from_outside
        return raw

    def _final_state(self, container) -> dict | None:
        """The container's State once it has exited, or None if it no longer exists."""
        try:
            try:
                container.wait(timeout=EXIT_WAIT_S)
            except RequestException:
                log.warning("container %s still running after its output ended; killing it", container.id[:12])
                container.kill()
                container.wait(timeout=EXIT_WAIT_S)
            container.reload()
        except docker.errors.NotFound:
            return None
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot inspect the sandbox container: {exc}") from exc
        return container.attrs["State"]

    def _remove(self, container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except DOCKER_ERRORS as exc:
            log.warning("cannot remove container %s (the reaper will retry): %s", container.id[:12], exc)
