"""The function registry: function documents, their unique names, and their code versions.

A function's name is claimed by a separate `name:<tenant>:<name>` document inserted with the same
conditional insert as the function itself, so two uploads racing for a name get one 201 and one
409 on DynamoDB and SQLite alike; names are unique per tenant, ids globally. Code is written to
the code store before the metadata that points at it, and every version keeps its own object, so
a job queued for version N still finds its code after version N+1 is uploaded.

Every function belongs to a tenant (nanogrid.keys): its document carries it, its code objects sit
under the tenant's prefix, and a lookup that names a tenant treats another tenant's function
exactly like an unknown id (NotFound). Lookups without a tenant are the worker's and operators'.
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
from nanogrid.keys import DEFAULT_TENANT
from nanogrid.limits import Limits
from nanogrid.storage import BlobStore, DocumentTable

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ID_PATTERN = re.compile(r"^fn-[0-9a-f]{16}$")
SETTINGS_FIELDS = ("timeout_s", "memory_mb", "limits", "env", "retries", "callback_url", "requirements", "init")
PUBLIC_FIELDS = (
    "function_id", "name", "version", "code_sha256", "handler", "timeout_s", "memory_mb", "retries", "callback_url",
    "requirements", "init", "created_at", "updated_at",
)
INIT_MODES = ("once", "per_run")  # handler mode: import main.py once per warm sandbox, or for every run
LIMIT_SHORTCUTS = ("timeout_s", "memory_mb")  # limits that also have a top-level field


def code_key(tenant: str, function_id: str, version: int) -> str:
    return f"{tenant}/functions/{function_id}/v{version}.zip"


def archive_key(tenant: str, function_id: str, version: int) -> str:
    return f"{tenant}/{function_id}/v{version}.zip"


def tenant_of(doc: dict) -> str:
    """The tenant a function or job document belongs to (documents from before tenants: the default)."""
    return doc.get("tenant") or DEFAULT_TENANT


class FunctionRegistry:
    def __init__(self, table: DocumentTable, code: BlobStore):
        self.table = table
        self.code = code

    def create(self, name: str, bundle: Bundle, options: dict, tenant: str = DEFAULT_TENANT) -> dict:
        function_id = "fn-" + uuid.uuid4().hex[:16]
        now = time.time()
        doc = {
            "function_id": function_id, "rev": 1, "tenant": tenant, "name": name, "version": 1,
            "code_sha256": bundle.sha256, "handler": bundle.handler,
            "env": options.get("env") or {}, "retries": options.get("retries"),
            "callback_url": options.get("callback_url"), "created_at": now, "updated_at": now,
            "init": options.get("init") or "once",
        }
        _set_requirements(doc, options.get("requirements") or "", options.get("layer_sha256"))
        _set_limits(doc, options, {})
        try:
            self.table.insert(_name_id(tenant, name), {"rev": 1, "function_id": function_id})
        except Conflict:
            raise Conflict(f"a function named {name!r} already exists; update it with PUT /functions/<id> "
                           "(or `nanogrid deploy`, which does), or choose another name") from None
        try:
            self.code.put(code_key(tenant, function_id, 1), bundle.data)
            self.table.insert(function_id, doc)
        except BaseException:
            self.table.delete(_name_id(tenant, name))
            raise
        return doc

    def get(self, function_id: str, tenant: str | None = None) -> dict:
        """The function; with a tenant, another tenant's function is NotFound like an unknown id."""
        if not ID_PATTERN.match(function_id):
            raise NotFound(function_id)
        doc = self.table.get(function_id)
        if tenant is not None and tenant_of(doc) != tenant:
            raise NotFound(function_id)
        return doc

    def find(self, name_or_id: str, tenant: str = DEFAULT_TENANT) -> dict:
        if ID_PATTERN.match(name_or_id):
            return self.get(name_or_id, tenant)
        if not NAME_PATTERN.match(name_or_id):
            raise NotFound(name_or_id)
        return self.get(self.table.get(_name_id(tenant, name_or_id))["function_id"], tenant)

    def list(self, tenant: str | None = None) -> list[dict]:
        """The functions of one tenant, or of every tenant when none is named."""
        docs = [d for d in self.table.scan() if "name" in d and (tenant is None or tenant_of(d) == tenant)]
        return sorted(docs, key=lambda d: d["created_at"])

    def update(self, function_id: str, bundle: Bundle | None, options: dict, tenant: str | None = None) -> dict:
        """New code or settings make a new version; an identical update changes nothing."""
        current = self.get(function_id, tenant)
        doc = copy.deepcopy(current)
        if "env" in options:
            doc["env"] = options["env"] or {}
        for name in ("retries", "callback_url", "init"):
            if name in options and options[name] != current.get(name):
                doc[name] = options[name]
        if "requirements" in options and (options["requirements"] or "") != (current.get("requirements") or ""):
            _set_requirements(doc, options["requirements"] or "", options.get("layer_sha256"))
        if any(name in options for name in ("limits", *LIMIT_SHORTCUTS)):
            _set_limits(doc, options, requested_limits(current))
        if bundle is not None and (bundle.sha256 != doc["code_sha256"] or bundle.handler != doc["handler"]):
            doc.update(code_sha256=bundle.sha256, handler=bundle.handler)
        if doc == current:
            return current
        doc.update(version=current["version"] + 1, rev=current["rev"] + 1, updated_at=time.time())
        self.code.put(code_key(tenant_of(doc), function_id, doc["version"]),
                      bundle.data if bundle else self.code_of(current))
        if not self.table.replace(function_id, doc, current["rev"]):
            raise Conflict(f"function {function_id} was changed concurrently; retry")
        return doc

    def code_of(self, doc: dict) -> bytes:
        return self.code.get(code_key(tenant_of(doc), doc["function_id"], doc["version"]))

    def delete(self, function_id: str, tenant: str | None = None) -> dict:
        doc = self.get(function_id, tenant)
        self.table.delete(function_id)
        self.table.delete(_name_id(tenant_of(doc), doc["name"]))
        for version in range(1, doc["version"] + 1):
            self.code.delete(code_key(tenant_of(doc), function_id, version))
        return doc

    def layers_unused_after(self, deleted: dict) -> set[str]:
        """The layers the deleted function's versions used that no other function's version uses."""
        used = set(deleted.get("layers_used") or [])
        for other in self.list():
            used -= set(other.get("layers_used") or [])
        return used


def _set_requirements(doc: dict, requirements: str, layer_sha: str | None) -> None:
    """The (normalised) requirements and the layer they name; every layer a version used is kept
    in layers_used, so a queued run of an older version still finds its layer."""
    doc["requirements"] = requirements or None
    doc["layer_sha256"] = layer_sha if requirements else None
    if doc["layer_sha256"] and doc["layer_sha256"] not in doc.setdefault("layers_used", []):
        doc["layers_used"].append(doc["layer_sha256"])


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
    view["init"] = view["init"] or "once"
    requested = requested_limits(doc)
    view["limits"] = dataclasses.asdict(Limits.resolve(settings, requested)) if settings is not None else requested
    for name in ("created_at", "updated_at"):
        view[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view[name]))
    return view


def _name_id(tenant: str, name: str) -> str:
    return f"name:{tenant}:{name}"
