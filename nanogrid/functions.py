"""The function registry: function documents, their unique names, and their code versions.

A function's name is claimed by a separate `name:<name>` document inserted with the same
conditional insert as the function itself, so two uploads racing for a name get one 201 and one
409 on DynamoDB and SQLite alike. Code is written to the code store before the metadata that
points at it, and every version keeps its own object, so a job queued for version N still finds
its code after version N+1 is uploaded.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
import uuid

from nanogrid.bundles import Bundle
from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound
from nanogrid.sandbox import Limits
from nanogrid.storage import BlobStore, DocumentTable

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ID_PATTERN = re.compile(r"^fn-[0-9a-f]{16}$")
SETTINGS_FIELDS = ("timeout_s", "memory_mb", "limits", "env")
PUBLIC_FIELDS = (
    "function_id", "name", "version", "code_sha256", "handler", "timeout_s", "memory_mb", "created_at", "updated_at",
)
LIMIT_SHORTCUTS = ("timeout_s", "memory_mb")  # limits that also have a top-level field


def code_key(function_id: str, version: int) -> str:
    return f"functions/{function_id}/v{version}.zip"


class FunctionRegistry:
    def __init__(self, table: DocumentTable, code: BlobStore):
        self.table = table
        self.code = code

    def create(self, name: str, bundle: Bundle, options: dict) -> dict:
        function_id = "fn-" + uuid.uuid4().hex[:16]
        now = time.time()
        doc = {
            "function_id": function_id, "rev": 1, "name": name, "version": 1,
            "code_sha256": bundle.sha256, "handler": bundle.handler,
            "env": options.get("env") or {}, "created_at": now, "updated_at": now,
        }
        _set_limits(doc, options, {})
        self.table.insert(_name_id(name), {"rev": 1, "function_id": function_id})
        try:
            self.code.put(code_key(function_id, 1), bundle.data)
            self.table.insert(function_id, doc)
        except BaseException:
            self.table.delete(_name_id(name))
            raise
        return doc

    def get(self, function_id: str) -> dict:
        if not ID_PATTERN.match(function_id):
            raise NotFound(function_id)
        return self.table.get(function_id)

    def find(self, name_or_id: str) -> dict:
        if ID_PATTERN.match(name_or_id):
            return self.get(name_or_id)
        if not NAME_PATTERN.match(name_or_id):
            raise NotFound(name_or_id)
        return self.get(self.table.get(_name_id(name_or_id))["function_id"])

    def list(self) -> list[dict]:
        docs = [d for d in self.table.scan() if "name" in d]
        return sorted(docs, key=lambda d: d["created_at"])

    def update(self, function_id: str, bundle: Bundle | None, options: dict) -> dict:
        """New code or settings make a new version; an identical update changes nothing."""
        current = self.get(function_id)
        doc = copy.deepcopy(current)
        if "env" in options:
            doc["env"] = options["env"] or {}
        if any(name in options for name in ("limits", *LIMIT_SHORTCUTS)):
            _set_limits(doc, options, requested_limits(current))
        if bundle is not None and (bundle.sha256 != doc["code_sha256"] or bundle.handler != doc["handler"]):
            doc.update(code_sha256=bundle.sha256, handler=bundle.handler)
        if doc == current:
            return current
        doc.update(version=current["version"] + 1, rev=current["rev"] + 1, updated_at=time.time())
        self.code.put(code_key(function_id, doc["version"]), bundle.data if bundle else self.code_of(current))
        if not self.table.replace(function_id, doc, current["rev"]):
            raise Conflict(f"function {function_id} was changed concurrently; retry")
        return doc

    def code_of(self, doc: dict) -> bytes:
        return self.code.get(code_key(doc["function_id"], doc["version"]))

    def delete(self, function_id: str) -> dict:
        doc = self.get(function_id)
        self.table.delete(function_id)
        self.table.delete(_name_id(doc["name"]))
        for version in range(1, doc["version"] + 1):
            self.code.delete(code_key(function_id, version))
        return doc


def requested_limits(doc: dict) -> dict:
    """The limits a function asked for (documents from before `limits` have only the shortcuts)."""
    legacy = {name: doc[name] for name in LIMIT_SHORTCUTS if doc.get(name) is not None}
    return {**legacy, **(doc.get("limits") or {})}


def _set_limits(doc: dict, options: dict, current: dict) -> None:
    """A new `limits` object replaces the function's; top-level timeout_s / memory_mb change just those."""
    limits = dict(options["limits"]) if "limits" in options else dict(current)
    for name in LIMIT_SHORTCUTS:
        if name in options:
            limits[name] = options[name]
    doc["limits"] = {name: value for name, value in limits.items() if value is not None}
    for name in LIMIT_SHORTCUTS:
        doc[name] = doc["limits"].get(name)


def public(doc: dict, settings: Settings | None = None) -> dict:
    """The API's view; with settings, `limits` is the full effective set (defaults filled in, ceilings applied)."""
    view = {name: doc.get(name) for name in PUBLIC_FIELDS}
    requested = requested_limits(doc)
    view["limits"] = dataclasses.asdict(Limits.resolve(settings, requested)) if settings is not None else requested
    for name in ("created_at", "updated_at"):
        view[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view[name]))
    return view


def _name_id(name: str) -> str:
    return f"name:{name}"
