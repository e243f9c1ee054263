"""The containers of a job, seen from dockerd."""

from __future__ import annotations

import tempfile
from pathlib import Path

import docker

from nanogrid.client import TERMINAL, Client
from nanogrid.config import Settings
from nanogrid.sandbox import LABEL_INSTANCE, LABEL_JOB, instance_id
from nanogrid.sandbox.janitor import STATE_DIR_PREFIX
from support.waiting import eventually

CONTAINER_START_TIMEOUT_S = 60


def installation_containers(settings: Settings) -> list[str]:
    """The names of every container, running or not, that the installation of these settings made."""
    client = docker.from_env().api
    return [summary["Names"][0].lstrip("/") for summary in
            client.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance_id(settings)}"})]


def job_containers(job_id: str, *, running_only: bool = False) -> list[dict]:
    """Summaries of the containers running a job: labelled with it (a single-use container), or the
    warm container a worker on this host recorded as running it (the low-level call: no
    per-container inspect, so a container removed while listing cannot make the call fail)."""
    client = docker.from_env().api
    found = client.containers(all=not running_only, filters={"label": f"{LABEL_JOB}={job_id}"})
    for record in Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*/jobs/{job_id}"):
        try:
            container_id = record.read_text().split()[0]
        except (OSError, IndexError):
            continue
        found += client.containers(all=not running_only, filters={"id": container_id})
    return found


def await_job_container(api: Client, job_id: str) -> None:
    """Return once a container runs the job; fail at once if the job ends without one."""

    def running() -> bool:
        if job_containers(job_id, running_only=True):
            return True
        job = api.job(job_id)
        assert job["status"] not in TERMINAL, f"the job ended before a container ran it: {job}"
        return False

    eventually(running, CONTAINER_START_TIMEOUT_S, f"a container runs job {job_id}", interval_s=0.2)


def await_no_job_container(job_id: str, timeout_s: float, why: str) -> None:
    """Return once no container of the job is left, running or not."""
    eventually(lambda: not job_containers(job_id), timeout_s, f"no container of job {job_id} is left ({why})",
               interval_s=0.2)


def cancel_a_running_job(stack, worker_log: str, code: str) -> None:
    """Cancel a run of code while its container runs; the job ends cancelled, the container goes,
    and the worker (whose log is worker_log) says its run is over."""
    function_id = stack.client.create("cancel-running", code, timeout_s=300)["function_id"]
    job_id = stack.client.invoke(function_id, None, wait_s=0)["job_id"]
    await_job_container(stack.client, job_id)
    cancelled = stack.client.cancel(job_id)
    assert cancelled["status"] == "FAILED" and cancelled["error"]["type"] == "cancelled", cancelled
    await_no_job_container(job_id, 60, "the cancelled run's container is removed")
    # The worker's own word that its run is over: nothing it does can change the job any more.
    eventually(lambda: stack.lines(worker_log, "run finished", job_id), 60, "the worker ends the cancelled run")
    assert stack.client.job(job_id)["error"]["type"] == "cancelled"
