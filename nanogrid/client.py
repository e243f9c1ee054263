"""A small HTTP client for the NanoGrid API, used by the CLI and the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import requests


class ClientError(Exception):
    pass


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
            raise ClientError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code == 204:
            return {}
        try:
            body = response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: HTTP {response.status_code} with a non-JSON body") from None
        if response.status_code >= 400:
            error = body.get("error", {})
            raise ClientError(f"{error.get('code', response.status_code)}: {error.get('message', body)}")
        return body

    def deploy(self, path: Path, name: str, options: dict) -> dict:
        form = {"name": name, **{k: str(v) for k, v in options.items()}}
        existing = self.find(name)
        with open(path, "rb") as f:
            files = {"file": (path.name, f.read())}
        if existing is None:
            return self._call("POST", "/functions", data=form, files=files)
        form.pop("name")
        return self._call("PUT", f"/functions/{existing['function_id']}", data=form, files=files)

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

    def invoke(self, function_id: str, event=NO_INPUT, wait_s: float | None = None) -> dict:
        body: dict = {} if event is NO_INPUT else {"input": event}
        if wait_s is not None:
            body["wait_s"] = wait_s
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
        while True:
            headers = {**kwargs.pop("headers", {}), **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                response = self.http.request(method, self.url + path, stream=True, timeout=(10, None),
                                             headers=headers, **kwargs)
            except requests.RequestException as exc:
                raise ClientError(f"cannot reach {self.url}: {exc}") from None
            if response.status_code >= 400:
                try:
                    error = response.json().get("error", {})
                except ValueError:
                    error = {}
                raise ClientError(f"{error.get('code', response.status_code)}: {error.get('message', response.text)}")
            kind, data = None, []
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("id:"):
                    last_id = line[3:].strip()
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and kind:
                    yield kind, json.loads("\n".join(data))
                    if kind == "end":
                        return
                    kind, data = None, []
            # The server closed a long stream: go on from the last event (a run request's own
            # stream continues as its job's events, so the run is not started twice).
            if method == "POST":
                method, path, kwargs = "GET", response.headers["Location"] + "/events", {}
