"""A small HTTP client for the NanoGrid API, used by the CLI and the tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator

import requests

# A job in one of these states changes no more (nanogrid.jobs.records.TERMINAL, as the API shows it).
TERMINAL = ("SUCCESS", "FAILED")


def parse_events(lines: Iterable[str]) -> Iterator[tuple[str | None, str, dict]]:
    """(id, event, data) of each event of a text/event-stream (NanoGrid's events carry JSON data);
    comments (keep-alives) are skipped."""
    event_id, kind, data = None, None, []
    for line in lines:
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and kind:
            yield event_id, kind, json.loads("\n".join(data))
            event_id, kind, data = None, None, []


class ClientError(Exception):
    """A call that failed: the API unreachable (status None), or its error answer (status, code)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


NO_INPUT = object()  # invoke() without an input: the run gets the API's default (an empty object)


class Client:
    def __init__(self, url: str, timeout_s: float = 330, api_key: str | None = None):
        """api_key: sent as `Authorization: Bearer` (none: an open API)."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise self._unreachable(exc) from None
        if response.status_code == 204:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: HTTP {response.status_code} with a non-JSON body",
                              response.status_code) from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            code = error.get("code")
            raise ClientError(f"{code or response.status_code}: {error.get('message', body)}", response.status_code,
                              code)
        return body

    def _unreachable(self, exc: requests.RequestException) -> ClientError:
        """One line for a newcomer: where the CLI looked, how to point it elsewhere, what happened."""
        if isinstance(exc, requests.Timeout):
            what = f"no answer within {self.timeout_s:g} s"
        elif isinstance(exc, requests.ConnectionError):
            what = "nothing answers there (connection refused, or the host is unreachable)"
        else:
            what = type(exc).__name__
        return ClientError(f"cannot reach the NanoGrid API at {self.url}: {what}; point NANOGRID_URL (or --url) "
                           "at it (nanogrid dev prints its address)")

    # -- functions -----------------------------------------------------------------------------

    def deploy(self, path: Path, name: str, options: dict) -> dict:
        """Upload a file (main.py or a zip) as the function name: created, or a new version of it."""
        form = {"name": name, **{k: str(v) for k, v in options.items()}}
        existing = self.find(name)
        with open(path, "rb") as f:
            files = {"file": (path.name, f.read())}
        if existing is None:
            return self._call("POST", "/functions", data=form, files=files)
        form.pop("name")
        return self._call("PUT", f"/functions/{existing['function_id']}", data=form, files=files)

    def create(self, name: str, code: str, **fields) -> dict:
        """A new function from its source text (the API's JSON upload); fields: handler, timeout_s,
        memory_mb, limits, env."""
        return self._call("POST", "/functions", json={"name": name, "code": code, **fields})

    def update(self, function_id: str, **fields) -> dict:
        """Change a function (code, handler, limits, ...): a new version when anything differs."""
        return self._call("PUT", f"/functions/{function_id}", json=fields)

    def function(self, function_id: str) -> dict:
        return self._call("GET", f"/functions/{function_id}")

    def versions(self, function_id: str) -> list[dict]:
        return self._call("GET", f"/functions/{function_id}/versions")["versions"]

    def set_alias(self, function_id: str, name: str, version: int, weights: dict | None = None) -> dict:
        return self._call("PUT", f"/functions/{function_id}/aliases/{name}",
                          json={"version": version, **({"weights": weights} if weights else {})})

    def alias(self, function_id: str, name: str) -> dict:
        return self._call("GET", f"/functions/{function_id}/aliases/{name}")

    def delete_function(self, function_id: str) -> None:
        self._call("DELETE", f"/functions/{function_id}")

    def functions(self) -> list[dict]:
        return self._call("GET", "/functions")["functions"]

    def set_secret(self, name: str, value: str) -> dict:
        return self._call("PUT", f"/secrets/{name}", json={"value": value})

    def secrets(self) -> list[dict]:
        return self._call("GET", "/secrets")["secrets"]

    def delete_secret(self, name: str) -> None:
        self._call("DELETE", f"/secrets/{name}")

    def build(self, function_id: str) -> dict:
        """The function's dependency build: status, layer, error and pip's log."""
        return self._call("GET", f"/functions/{function_id}/build")

    def find(self, name: str) -> dict | None:
        for doc in self._call("GET", "/functions")["functions"]:
            if doc["name"] == name:
                return doc
        return None

    def resolve(self, name_or_id: str) -> str:
        if name_or_id.startswith("fn-"):
            return name_or_id
        doc = self.find(name_or_id)
        if doc is None:
            raise ClientError(f"no function named {name_or_id!r}")
        return doc["function_id"]

    # -- runs ----------------------------------------------------------------------------------

    def invoke(self, function_id: str, event=NO_INPUT, wait_s: float | None = None,
               limits: dict | None = None) -> dict:
        """Run the function: the finished job, or (wait_s 0, or a run longer than wait_s) the job so far.
        No event: the run gets the API's default input. limits: what this run asks for on top of
        the function's own."""
        body: dict = {} if event is NO_INPUT else {"input": event}
        if wait_s is not None:
            body["wait_s"] = wait_s
        if limits:
            body["limits"] = limits
        return self._call("POST", f"/functions/{function_id}/run", data=json.dumps(body),
                          headers={"Content-Type": "application/json"})

    def job(self, job_id: str, wait_s: float | None = None) -> dict:
        """The job; with wait_s, once it has ended or after that many seconds, whichever is first."""
        return self._call("GET", f"/jobs/{job_id}", params={"wait_s": wait_s} if wait_s else None)

    def jobs(self, function_id: str | None = None, status: str | None = None, limit: int = 50,
             cursor: str | None = None) -> dict:
        """A page of the tenant's jobs, newest first: {"jobs": [...], "next_cursor"}."""
        params = {k: v for k, v in {"function_id": function_id, "status": status, "limit": limit,
                                    "cursor": cursor}.items() if v is not None}
        return self._call("GET", "/jobs", params=params)

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.2) -> dict:
        """Poll the job until it is SUCCESS or FAILED or timeout_s has passed; its latest record either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def run_events(self, function_id: str, event=NO_INPUT) -> Iterator[tuple[str, dict]]:
        """Run a function and follow its events as they come: (event, data) until "end"."""
        body = {} if event is NO_INPUT else {"input": event}
        return self._events("POST", f"/functions/{function_id}/run", data=json.dumps(body),
                            headers={"Content-Type": "application/json", "Accept": "text/event-stream"})

    def job_events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """A job's events, from its first (those of a finished job too), until "end"."""
        return self._events("GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})

    def _events(self, method: str, path: str, **kwargs) -> Iterator[tuple[str, dict]]:
        """Server-Sent Events, reconnecting with Last-Event-ID when the server closes a long stream."""
        last_id = None
        asked = kwargs.pop("headers", {})
        while True:
            headers = {**asked, **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                response = self.http.request(method, self.url + path, stream=True, timeout=(10, None),
                                             headers=headers, **kwargs)
            except requests.RequestException as exc:
                raise self._unreachable(exc) from None
            if response.status_code >= 400:
                try:
                    error = response.json().get("error", {})
                except ValueError:
                    error = {}
                code = error.get("code")
                raise ClientError(f"{code or response.status_code}: {error.get('message', response.text)}",
                                  response.status_code, code)
            for event_id, kind, data in parse_events(response.iter_lines(chunk_size=None, decode_unicode=True)):
                last_id = event_id or last_id
                yield kind, data
                if kind == "end":
                    return
            # The server closed a long stream: go on from the last event (a run request's own
            # stream continues as its job's events, so the run is not started twice).
            if method == "POST":
                method, path, kwargs = "GET", response.headers["Location"] + "/events", {}

    # -- the service ---------------------------------------------------------------------------

    def health(self) -> dict:
        return self._call("GET", "/health")

    def limits(self) -> dict:
        return self._call("GET", "/limits")
