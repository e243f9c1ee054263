"""The function registry: function documents, their unique names, and their code versions.

A function's name is claimed by a separate `name:<name>` document inserted with the same
conditional insert as the function itself, so two uploads racing for a name get one 201 and one
409 on DynamoDB and SQLite alike. Code is written to the code store before the metadata that
points at it, and every version keeps its own object, so a job queued for version N still finds
its code after version N+1 is uploaded.
"""

from __future__ import annotations

import copy
import re
import time
import uuid

from nanogrid.bundles import Bundle
from nanogrid.errors import Conflict, NotFound
from nanogrid.storage import BlobStore, DocumentTable

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ID_PATTERN = re.compile(r"^fn-[0-9a-f]{16}$")
SETTINGS_FIELDS = ("timeout_s", "memory_mb", "env")
PUBLIC_FIELDS = (
    "function_id", "name", "version", "code_sha256", "handler", "timeout_s", "memory_mb", "created_at", "updated_at",
)


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
            "timeout_s": options.get("timeout_s"), "memory_mb": options.get("memory_mb"),
            "env": options.get("env") or {}, "created_at": now, "updated_at": now,
        }
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
        for name in SETTINGS_FIELDS:
            if name in options:
                doc[name] = options[name] if name != "env" else (options[name] or {})
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


def public(doc: dict) -> dict:
    view = {name: doc.get(name) for name in PUBLIC_FIELDS}
    for name in ("created_at", "updated_at"):
        view[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view[name]))
    return view


def _name_id(name: str) -> str:
    return f"name:{name}"
