"""The Docker sandbox: every run gets a fresh, locked-down container of the runtime image.

The container has no network, a read-only root, a small noexec /tmp, no capabilities and an
unprivileged user; memory, CPU, processes, open files and file size are capped by the kernel.
The worker enforces the wall-clock deadline and the output cap itself, by killing the container;
if the container's output has not ended KILL_GRACE_S after a kill (a wedged dockerd or runtime),
it cuts the stream and force-removes the container, so no run outlives its deadline by more than
that. The exit state (exit code, OOMKilled) is read before the container is removed, which always
happens; leftovers are found by their nanogrid.job label (the reaper). Peak memory and CPU time
come from the container's cgroup files when the worker can read them (a worker on the host can),
else from the runner's own accounting of the user process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import docker
import docker.errors
from docker.types import LogConfig, Mount, Ulimit
from requests.exceptions import RequestException

from nanogrid.ai import SANDBOX_SOCKET_DIR
from nanogrid.config import Settings
from nanogrid.errors import Unavailable
from nanogrid.sandbox import (LABEL_FUNCTION, LABEL_INSTANCE, LABEL_JOB, LABEL_WORKER, FrameReader, RawRun, RunSpec,
                              instance_id)

log = logging.getLogger(__name__)

BUILD_HINT = "run `nanogrid image build`"
CODE_MOUNT = "/code"
RUNNER_COMMAND = ["python3", "-I", "-B", "/opt/nanogrid/runner.py", CODE_MOUNT]
SANDBOX_USER = "65534:65534"
MiB = 1024 * 1024
API_TIMEOUT_S = 60
# After the output stream ends the container is exiting; longer than this means it is stuck.
EXIT_WAIT_S = 5
# After a kill, the container's output must end within this, or the container is force-removed.
KILL_GRACE_S = 3
# How often the supervisor samples the container's cgroup (and checks the deadline).
SAMPLE_S = 0.25
CGROUP_ROOT = Path("/sys/fs/cgroup")
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


class _Usage:
    """Peak memory and CPU time of a running container, from its cgroup files (a few µs a read).

    cgroup v1 (cgroupfs or systemd driver) and v2 layouts; when none is visible (a worker inside
    a container without the host's cgroupfs) the figures stay None. The files vanish when the
    container exits, so the supervisor samples while it runs and once more when the runner
    reports the user process's exit; max_usage / memory.peak are high-water marks, so the last
    successful read holds the peak.
    """

    def __init__(self, container_id: str):
        self.container_id = container_id
        self.memory_file: Path | None = None
        self.cpu_file: Path | None = None
        self.located = False
        self.peak_memory_bytes: int | None = None
        self.cpu_ns: int | None = None
        self.lock = threading.Lock()  # the supervisor, a kill and the stream reader all sample

    def _locate(self) -> None:
        leaves = (Path("docker", self.container_id), Path("system.slice", f"docker-{self.container_id}.scope"))
        for leaf in leaves:
            memory = CGROUP_ROOT / "memory" / leaf / "memory.max_usage_in_bytes"
            if memory.exists():
                cpus = (CGROUP_ROOT / name / leaf / "cpuacct.usage" for name in ("cpuacct", "cpu,cpuacct"))
                self.memory_file, self.cpu_file = memory, next((p for p in cpus if p.exists()), None)
                break
            unified = CGROUP_ROOT / leaf
            if (unified / "cpu.stat").exists():
                self.memory_file = unified / "memory.peak" if (unified / "memory.peak").exists() else None
                self.cpu_file = unified / "cpu.stat"
                break
        self.located = True

    def sample(self) -> None:
        with self.lock:
            self._sample()

    def _sample(self) -> None:
        try:
            if not self.located:
                self._locate()
            if self.memory_file is not None:
                value = int(self.memory_file.read_text())
                self.peak_memory_bytes = max(value, self.peak_memory_bytes or 0)
            if self.cpu_file is not None:
                text = self.cpu_file.read_text()
                if self.cpu_file.name == "cpu.stat":
                    usec = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))
                    value = int(usec) * 1000
                else:
                    value = int(text)
                self.cpu_ns = max(value, self.cpu_ns or 0)
        except (OSError, ValueError, StopIteration, IndexError):
            pass  # the container is gone (or the layout is unknown): keep what was read so far


class _Supervisor:
    """Watches one run: the deadline, the kill (at most once, never blocking the stream reader),
    the escalation when a killed container's output does not end, and the cgroup samples."""

    def __init__(self, sandbox: "DockerSandbox", container, usage: _Usage):
        self.sandbox = sandbox
        self.container = container
        self.usage = usage
        self.lock = threading.Lock()
        self.ended = threading.Event()
        self.reason: str | None = None  # "timeout", "output", "garbled" or "cancel"
        self.killed_at: float | None = None
        self.escalated = False
        self.stream = None

    def kill(self, reason: str) -> None:
        with self.lock:
            if self.ended.is_set() or self.killed_at is not None:  # at most one kill, even after a 409
                return
            self.reason, self.killed_at = reason, time.monotonic()
        # dockerd answers a kill only once the container's output is drained, so the thread
        # reading that output must not be the one waiting for the answer.
        threading.Thread(target=self._send_kill, name=f"kill-{self.container.id[:12]}", daemon=True).start()

    def end(self) -> None:
        self.ended.set()

    def watch(self, deadline: float) -> None:
        """The supervisor thread: until the output ends, sample, enforce the deadline, escalate."""
        while not self.ended.wait(min(SAMPLE_S, max(deadline - time.monotonic(), 0.0) or SAMPLE_S)):
            self.usage.sample()
            now = time.monotonic()
            if now >= deadline:
                self.kill("timeout")
            if self.killed_at is not None and now >= self.killed_at + KILL_GRACE_S and not self.escalated:
                self._escalate()

    def _escalate(self) -> None:
        """The kill did not end the output: cut the stream and force-remove the container."""
        self.escalated = True
        log.warning("container %s still streaming %.0f s after it was killed; force-removing it",
                    self.container.id[:12], KILL_GRACE_S)
        if self.stream is not None:
            try:
                self.stream.close()
            except Exception:  # noqa: BLE001 - a half-closed socket must not stop the escalation
                pass
        threading.Thread(target=self.sandbox._remove, args=(self.container,), daemon=True).start()

    def _send_kill(self) -> None:
        self.usage.sample()  # the last look at the cgroup: it goes with the container
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
        self.instance = instance_id(settings)
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

        None means no restriction, so keep={...} alone (the reaper's sweep) removes every job
        container of this installation on this dockerd except those, whichever worker started
        them; another installation's containers (another Redis) are never swept.
        """
        labels = [LABEL_JOB] if job_ids is not None else [LABEL_JOB, f"{LABEL_INSTANCE}={self.instance}"]
        try:
            containers = self.client.api.containers(all=True, filters={"label": labels})
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
            labels={LABEL_JOB: spec.job_id, LABEL_FUNCTION: spec.function_id, LABEL_WORKER: self.worker_id,
                    LABEL_INSTANCE: self.instance},
            mounts=[Mount(target=CODE_MOUNT, source=str(spec.run_dir.resolve()), type="bind", read_only=True)],
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777"},
            # Docker's own /dev/shm (noexec, nosuid, nodev; POSIX shared memory, multiprocessing's
            # locks) is the other writable place: the same size as /tmp instead of Docker's 64 MiB.
            shm_size=limits.tmpfs_mb * MiB,
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
        if spec.ai_socket_dir is not None:
            # The run's AI channel: a directory holding only the channel's Unix socket, read-only.
            # Connecting to a socket needs no write access to the mount, and the network stays "none".
            options["mounts"].append(Mount(target=SANDBOX_SOCKET_DIR, source=str(spec.ai_socket_dir.resolve()),
                                           type="bind", read_only=True))
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
        usage = _Usage(container.id)
        supervisor = _Supervisor(self, container, usage)
        try:
            # Attached before the start, so not a byte of output is missed however fast the run.
            stream = container.attach(stdout=True, stderr=True, stream=True, demux=True)
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot attach to the sandbox container: {exc}") from exc
        supervisor.stream = stream
        since = int(time.time()) - 1
        try:
            container.start()
        except DOCKER_ERRORS as exc:
            _close(stream)
            raise Unavailable(f"cannot start the sandbox container: {exc}") from exc
        started = time.monotonic()
        watcher = threading.Thread(target=supervisor.watch, args=(started + limits.timeout_s,),
                                   name=f"watch-{spec.job_id}", daemon=True)
        watcher.start()
        self._running[spec.job_id] = supervisor
        exit_sampled = False
        try:
            for stdout, stderr in stream:
                if stdout:
                    frames.feed(stdout)
                    if frames.over_cap:
                        supervisor.kill("output")
                    elif frames.garbled:
                        supervisor.kill("garbled")
                    if frames.exit is not None and not exit_sampled:
                        # The user process has exited and the runner is about to: the cgroup's
                        # high-water mark is final now, and the files vanish with the container.
                        usage.sample()
                        exit_sampled = True
                if stderr:
                    runner_stderr += stderr
                    del runner_stderr[:-RUNNER_STDERR_KEEP]
        finally:
            supervisor.end()
            _close(stream)
            self._running.pop(spec.job_id, None)
        raw.duration_ms = int((time.monotonic() - started) * 1000)
        usage.sample()
        frames.fill(raw)
        raw.timed_out = supervisor.reason == "timeout"
        state = self._final_state(container)
        if state is None:
            runner_stderr += b"\n[nanogrid] the container was removed while the run was in progress"
        elif state.get("Running"):
            runner_stderr += b"\n[nanogrid] the container did not stop when killed"
        else:
            raw.runner_exit_code, raw.oom_killed = state["ExitCode"], bool(state.get("OOMKilled"))
        raw.runner_stderr = bytes(runner_stderr[-RUNNER_STDERR_KEEP:])
        if usage.peak_memory_bytes is not None:
            raw.peak_memory_bytes = max(usage.peak_memory_bytes, raw.peak_memory_bytes or 0)
        if usage.cpu_ns is not None:
            raw.cpu_time_ms = max(usage.cpu_ns // 1_000_000, raw.cpu_time_ms or 0)
        # A SIGKILL this run did not send, with no OOM and no exit report from the runner: either
        # someone called kill(job_id) from another process (or `docker kill`ed it), which is a
        # cancellation, or the function killed its own runner (same user), which is not. Only the
        # first leaves a kill event in dockerd.
        killed = (supervisor.reason is None and frames.exit is None and not raw.oom_killed
                  and raw.runner_exit_code == SIGKILL_EXIT_CODE)
        raw.cancelled = supervisor.reason == "cancel" or (killed and self._kill_requested(container, since))
        return raw

    def _kill_requested(self, container, since: int) -> bool:
        """Whether dockerd was asked to kill the container (by anyone) since `since`."""
        try:
            events = self.client.api.events(since=since, until=time.time(), decode=True,
                                            filters={"container": container.id, "event": "kill"})
            return any(True for _ in events)
        except DOCKER_ERRORS as exc:
            log.warning("cannot read dockerd's events for %s: %s", container.id[:12], exc)
            return True  # the likelier story: runners are rarely killed from inside

    def _final_state(self, container) -> dict | None:
        """The container's State once it has exited (exit code, OOMKilled), or None if it is gone.

        container.wait(timeout=) bounds only the HTTP call, not the container: when it expires
        the container is killed and waited for once more; if it still runs after that, its State
        says so and run() force-removes it. Never more than 2 * EXIT_WAIT_S.
        """
        for attempt in range(2):
            try:
                container.wait(timeout=EXIT_WAIT_S)
                break
            except docker.errors.NotFound:
                return None
            except RequestException:
                if attempt:
                    log.warning("container %s still running after a kill; it will be force-removed", container.id[:12])
                    break
                log.warning("container %s still running after its output ended; killing it", container.id[:12])
                try:
                    container.kill()
                except DOCKER_ERRORS:
                    pass  # exited meanwhile (409), or dockerd is struggling: the second wait tells
            except DOCKER_ERRORS as exc:
                raise Unavailable(f"cannot wait for the sandbox container: {exc}") from exc
        try:
            container.reload()
        except docker.errors.NotFound:
            return None
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot inspect the sandbox container: {exc}") from exc
        return container.attrs["State"]

    def _remove(self, container) -> None:
        """Force-remove the container; if a removal is already under way (the supervisor's
        escalation), wait for it, so a finished run never leaves its container behind."""
        deadline = time.monotonic() + EXIT_WAIT_S
        while True:
            try:
                container.remove(force=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or time.monotonic() > deadline:
                    log.warning("cannot remove container %s (the reaper will retry): %s", container.id[:12], exc)
                    return
                time.sleep(0.1)  # "removal already in progress"
            except DOCKER_ERRORS as exc:
                log.warning("cannot remove container %s (the reaper will retry): %s", container.id[:12], exc)
                return


def _close(stream) -> None:
    try:
        stream.close()
    except (OSError, DOCKER_ERRORS):
        pass  # already shut down (the supervisor cut it) or never fully opened
