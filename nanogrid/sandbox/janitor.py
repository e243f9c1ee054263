"""The container janitor: finds this installation's leftover sandbox containers and removes them.

Leftovers are found by their labels: nanogrid.job for single-use containers, nanogrid.warm (the
owning worker process, host:pid) for warm ones, both with nanogrid.instance naming the
installation, so two installations (or test stacks) sharing one dockerd never remove each
other's. The reaper runs it every interval; it also drops the host-side records of processes
that are gone (which warm container runs which job, the warm containers' AI folders).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import docker
import docker.errors
from requests.exceptions import RequestException

from nanogrid.errors import Unavailable
from nanogrid.host import pid_alive
from nanogrid.sandbox import LABEL_INSTANCE, LABEL_JOB, LABEL_WARM

DOCKER_ERRORS = (docker.errors.DockerException, RequestException)
# A container created but not started for this long is a leftover, not one being started.
CREATED_GRACE_S = 120
# Per installation, under the temporary directory: jobs/<job id> names the warm container running
# it (and its owner pid), ai/ holds the warm containers' AI folders.
STATE_DIR_PREFIX = "nanogrid-sandbox-"


class ContainerJanitor:
    def __init__(self, client: docker.DockerClient, instance: str, state_dir: Path):
        self.client, self.instance, self.state_dir = client, instance, state_dir

    def remove(self, job_ids: set[str] | None = None, keep: set[str] | None = None) -> int:
        """Force-remove containers labelled with a job in job_ids and not in keep.

        None means no restriction, so keep={...} alone (the reaper's sweep) removes every job
        container of this installation on this dockerd except those, whichever worker started
        them; another installation's containers (another Redis) are never swept. The sweep also
        removes this installation's warm containers that no live worker process keeps: those
        that have exited, and those whose owner was a process of this host that is gone.
        """
        labels = [LABEL_JOB] if job_ids is not None else [LABEL_JOB, f"{LABEL_INSTANCE}={self.instance}"]
        try:
            containers = self.client.api.containers(all=True, filters={"label": labels})
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot list containers: {exc}") from exc
        doomed = []
        for summary in containers:
            job_id = (summary.get("Labels") or {}).get(LABEL_JOB)
            if (job_ids is not None and job_id not in job_ids) or (keep is not None and job_id in keep):
                continue
            doomed.append(summary["Id"])
        if job_ids is None:
            doomed += self._ownerless_warm()
            self._drop_stale_records()
        removed = 0
        for container_id in doomed:
            try:
                self.client.api.remove_container(container_id, force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except DOCKER_ERRORS as exc:
                raise Unavailable(f"cannot remove container {container_id[:12]}: {exc}") from exc
        return removed

    def _ownerless_warm(self) -> list[str]:
        """Warm containers of this installation nobody keeps."""
        try:
            containers = self.client.api.containers(
                all=True, filters={"label": [LABEL_WARM, f"{LABEL_INSTANCE}={self.instance}"]})
        except DOCKER_ERRORS as exc:
            raise Unavailable(f"cannot list containers: {exc}") from exc
        host, found = socket.gethostname(), []
        for summary in containers:
            owner_host, _, pid = (summary.get("Labels") or {}).get(LABEL_WARM, "").rpartition(":")
            state = summary.get("State")
            gone = owner_host == host and pid.isdigit() and not pid_alive(int(pid))
            if (gone or state in ("exited", "dead")
                    or (state == "created" and time.time() - summary.get("Created", 0) > CREATED_GRACE_S)):
                found.append(summary["Id"])
        return found

    def _drop_stale_records(self) -> None:
        """Records of who runs what, and AI and stem-cell code folders, whose owner process is gone."""
        try:
            for record in (self.state_dir / "jobs").iterdir():
                fields = record.read_text().split()
                if len(fields) == 2 and fields[1].isdigit() and not pid_alive(int(fields[1])):
                    record.unlink(missing_ok=True)
        except OSError:
            pass
        for kind in ("ai", "stem"):
            try:
                for folder in (self.state_dir / kind).iterdir():  # both named <owner pid>-...
                    pid = folder.name.split("-", 1)[0]
                    if pid.isdigit() and not pid_alive(int(pid)):
                        shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass
