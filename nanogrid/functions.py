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
SETTINGS_FIELDS = ("timeout_s", "memory_mb", "limits", "env", "retries", "callback_url", "requirements", "init",
                   "max_concurrency", "secrets")
# What a version is: its code and every setting a run of it uses. A version's document keeps them,
# so a run of an older version (pinned, or through an alias) runs as that version did.
VERSION_FIELDS = ("version", "code_sha256", "handler", "env", "retries", "callback_url", "requirements",
                  "layer_sha256", "init", "limits", "timeout_s", "memory_mb", "secrets")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MAX_ALIAS_WEIGHTS = 4  # other versions one alias may split its traffic with
PUBLIC_FIELDS = (
    "function_id", "name", "version", "code_sha256", "handler", "timeout_s", "memory_mb", "retries", "callback_url",
    "requirements", "init", "max_concurrency", "secrets", "env", "created_at", "updated_at",
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
            "init": options.get("init") or "once", "max_concurrency": options.get("max_concurrency"),
            "secrets": options.get("secrets") or [],
            "kept_versions": [1], "aliases": {},
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
            self.table.insert(version_id(function_id, 1), version_doc(doc, now))
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

    def update(self, function_id: str, bundle: Bundle | None, options: dict, tenant: str | None = None,
               keep_versions: int = 20) -> dict:
        """New code or settings make a new version; an identical update changes nothing. Settings of
        the function as a whole (max_concurrency) change it without a new version. The last
        keep_versions versions and those an alias points at are kept; older ones are removed."""
        current = self.get(function_id, tenant)
        doc = copy.deepcopy(current)
        if "env" in options:
            doc["env"] = options["env"] or {}
        for name in ("retries", "callback_url", "init", "max_concurrency", "secrets"):
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
        now = time.time()
        doc.update(rev=current["rev"] + 1, updated_at=now)
        dropped = []
        if any(doc.get(name) != current.get(name) for name in VERSION_FIELDS):
            doc["version"] = current["version"] + 1
            kept = [*kept_versions(current), doc["version"]]
            pinned = alias_targets(doc)
            dropped = [v for v in kept[:-keep_versions] if v not in pinned] if len(kept) > keep_versions else []
            doc["kept_versions"] = [v for v in kept if v not in dropped]
            self.code.put(code_key(tenant_of(doc), function_id, doc["version"]),
                          bundle.data if bundle else self.code_of(current))
            self.table.insert(version_id(function_id, doc["version"]), version_doc(doc, now))
        if not self.table.replace(function_id, doc, current["rev"]):
            raise Conflict(f"function {function_id} was changed concurrently; retry")
        for version in dropped:
            self._remove_version(doc, version)
        return doc

    def versions(self, doc: dict) -> list[dict]:
        """The function's kept versions, newest first."""
        found = []
        for version in sorted(kept_versions(doc), reverse=True):
            try:
                found.append(self.version(doc, version))
            except NotFound:
                continue
        return found

    def version(self, doc: dict, version: int) -> dict:
        """One kept version's document: its code and settings (NotFound for another)."""
        if not isinstance(version, int) or isinstance(version, bool) or version not in kept_versions(doc):
            raise NotFound(f"{doc['function_id']} version {version}")
        if "kept_versions" not in doc:  # a function from before version documents: its current version
            return version_doc(doc, doc["updated_at"])
        return self.table.get(version_id(doc["function_id"], version))

    def run_settings(self, doc: dict, version: int) -> dict:
        """What a run of that version needs (VERSION_FIELDS): the current version's are the function
        document's own, so only an older version costs a read of its document (NotFound)."""
        source = doc if version == doc["version"] else self.version(doc, version)
        return {name: source.get(name) for name in VERSION_FIELDS}

    def set_alias(self, function_id: str, name: str, alias: dict, tenant: str | None = None) -> dict:
        """Point an alias at a version (and optionally weights of others); the function afterwards.
        Moving an alias keeps where it pointed before, for a rollback."""
        return self._change_aliases(function_id, tenant, lambda aliases, doc: aliases.__setitem__(
            name, {**alias, "previous": (aliases.get(name) or {}).get("version"), "updated_at": time.time()}))

    def delete_alias(self, function_id: str, name: str, tenant: str | None = None) -> dict:
        def remove(aliases: dict, doc: dict) -> None:
            if name not in aliases:
                raise NotFound(f"alias {name}")
            del aliases[name]

        return self._change_aliases(function_id, tenant, remove)

    def _change_aliases(self, function_id: str, tenant: str | None, change) -> dict:
        for _ in range(5):
            current = self.get(function_id, tenant)
            doc = copy.deepcopy(current)
            aliases = doc.setdefault("aliases", {})
            change(aliases, doc)
            doc.update(rev=current["rev"] + 1, updated_at=time.time())
            if self.table.replace(function_id, doc, current["rev"]):
                return doc
        raise Conflict(f"function {function_id} was changed concurrently; retry")

    def _remove_version(self, doc: dict, version: int) -> None:
        self.table.delete(version_id(doc["function_id"], version))
        self.code.delete(code_key(tenant_of(doc), doc["function_id"], version))

    def code_of(self, doc: dict) -> bytes:
        return self.code.get(code_key(tenant_of(doc), doc["function_id"], doc["version"]))

    def delete(self, function_id: str, tenant: str | None = None) -> dict:
        doc = self.get(function_id, tenant)
        self.table.delete(function_id)
        self.table.delete(_name_id(tenant_of(doc), doc["name"]))
        for version in range(1, doc["version"] + 1):
            self.code.delete(code_key(tenant_of(doc), function_id, version))
            self.table.delete(version_id(function_id, version))
        return doc

    def layers_unused_after(self, deleted: dict) -> set[str]:
        """The layers the deleted function's versions used that no other function's version uses."""
        used = set(deleted.get("layers_used") or [])
        for other in self.list():
            used -= set(other.get("layers_used") or [])
        return used


def utc_text(epoch: float) -> str:
    """A document's time as the API shows it (UTC, ISO 8601, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def version_id(function_id: str, version: int) -> str:
    return f"version:{function_id}:{version}"


def version_doc(doc: dict, created_at: float) -> dict:
    """The document of the function's current version: what a run of it needs."""
    return {"rev": 1, "function_id": doc["function_id"], "tenant": tenant_of(doc),
            **{name: copy.deepcopy(doc.get(name)) for name in VERSION_FIELDS}, "created_at": created_at}


def kept_versions(doc: dict) -> list[int]:
    """The versions that can still run (documents from before versions were kept: the current one)."""
    return doc.get("kept_versions") or [doc["version"]]


def alias_targets(doc: dict) -> set[int]:
    """Every version an alias of the function points at, or sends some of its runs to."""
    targets = set()
    for alias in (doc.get("aliases") or {}).values():
        targets.add(alias["version"])
        targets.update(int(version) for version in (alias.get("weights") or {}))
    return targets


def served_versions(doc: dict) -> frozenset[int]:
    """The versions runs arrive for without naming one: the current one and the aliases' (warm pools keep these)."""
    return frozenset({doc["version"], *alias_targets(doc)})


class AliasError(ValueError):
    """An alias that cannot be set as asked; the message says why."""


def check_alias(doc: dict, name: str, version, weights) -> dict:
    """The alias {version, weights} if the function can have it: kept versions, weights in (0, 1)
    with a sum below 1 (the rest of the runs go to `version`)."""
    if not ALIAS_PATTERN.match(name):
        raise AliasError("an alias name is a letter then up to 63 letters, digits, - and _ (e.g. prod)")
    kept = kept_versions(doc)
    if not isinstance(version, int) or isinstance(version, bool) or version not in kept:
        raise AliasError(f"version must be one of the function's versions: {', '.join(map(str, sorted(kept)))}")
    weights = weights or {}
    if not isinstance(weights, dict) or len(weights) > MAX_ALIAS_WEIGHTS:
        raise AliasError(f"weights must be an object of at most {MAX_ALIAS_WEIGHTS} \"<version>\": share pairs")
    checked = {}
    for other, share in weights.items():
        if not str(other).isdigit() or int(other) not in kept or int(other) == version:
            raise AliasError(f"weights: {other!r} is not another version of the function")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise AliasError(f"weights: the share of version {other} must be a number between 0 and 1")
        checked[str(int(other))] = float(share)
    if sum(checked.values()) >= 1:
        raise AliasError("weights: the shares add up to 1 or more; the alias's own version needs the rest")
    return {"version": version, "weights": checked}


def resolve_alias(alias: dict, draw: float) -> int:
    """The version a run through the alias goes to, for a uniform draw in [0, 1)."""
    for other, share in sorted((alias.get("weights") or {}).items()):
        if draw < share:
            return int(other)
        draw -= share
    return alias["version"]


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
    view["secrets"] = view["secrets"] or []
    view["env"] = view["env"] or {}
    requested = requested_limits(doc)
    view["limits"] = dataclasses.asdict(Limits.resolve(settings, requested)) if settings is not None else requested
    for name in ("created_at", "updated_at"):
        view[name] = utc_text(view[name])
    return view


def _name_id(tenant: str, name: str) -> str:
    return f"name:{tenant}:{name}"
