"""The API under Flask's test client, with the Services behind it: no server, no broker round trip."""

from __future__ import annotations

import threading
from typing import NamedTuple

from nanogrid.api import create_app
from nanogrid.config import Settings
from nanogrid.services import Services
from nanogrid.worker import execute


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Sent(NamedTuple):
    task: str
    job_id: str  # the message's first argument (a build's: the layer's sha256)
    countdown_s: float
    queue: str | None = None  # None: the task queue


class RecordingBroker:
    """Keeps the task messages the platform publishes (Sent: task, job id, countdown) instead of
    sending them: a test then sees each run, retry and callback the platform queued, and runs it
    itself, when it chooses. Safe to share between threads and between Services."""

    def __init__(self):
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    def send(self, task: str, args: list, countdown_s: float = 0, queue: str | None = None) -> None:
        with self._lock:
            self.sent.append(Sent(task, args[0], countdown_s, queue))

    def job_ids(self, task: str | None = None) -> list[str]:
        """The job ids of the messages sent (of task only, when given), in order."""
        with self._lock:
            return [sent.job_id for sent in self.sent if task is None or sent.task == task]


def recording(services: Services, broker: RecordingBroker | None = None) -> RecordingBroker:
    """Make services publish to a RecordingBroker (a new one unless given); before anything
    built on the broker (the job store) exists. Returns the broker."""
    assert "jobs" not in services.__dict__, "the job store already holds the real broker"
    services.__dict__["broker"] = broker = broker or RecordingBroker()
    return broker


class App:
    """A Flask test client (`client`) on these settings, with its Services and key store.

    Runs are executed in-process by the worker's own code path (execute.run) when a test asks:
    the API, the job records and the run pipeline without the broker. broker: a RecordingBroker
    the Services publish to instead of the real broker (`broker` is then that one)."""

    def __init__(self, settings: Settings, broker: RecordingBroker | None = None):
        self.services = Services(settings)
        self.broker = recording(self.services, broker) if broker is not None else None
        self.flask = create_app(settings, self.services)
        self.client = self.flask.test_client()
        self.keys = self.flask.extensions["nanogrid_guard"].keys

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def new_key(self, tenant: str) -> dict[str, str]:
        """The headers that act as tenant, with a new key of its own."""
        key, _ = self.keys.create(tenant)
        return bearer(key)

    def deploy(self, name: str, code: str, headers: dict | None = None, **fields) -> dict:
        """A new function from its source (POST /functions, JSON): its document."""
        response = self.client.post("/functions", json={"name": name, "code": code, **fields}, headers=headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def run(self, function_id: str, event=None, headers: dict | None = None, **body) -> dict:
        """Queue a run (wait_s 0: 202, PENDING, its Location), execute it in-process, and return
        the job as GET /jobs/<id> shows it; body: more of the run request (limits)."""
        queued = self.client.post(f"/functions/{function_id}/run", json={"input": event, "wait_s": 0, **body},
                                  headers=headers)
        assert queued.status_code == 202, queued.get_json()
        job_id = queued.get_json()["job_id"]
        assert queued.headers["Location"] == f"/jobs/{job_id}" and queued.get_json()["status"] == "PENDING"
        execute.run(self.services, job_id)
        return self.client.get(f"/jobs/{job_id}", headers=headers).get_json()
