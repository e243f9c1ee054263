"""Dependency layers: a function's requirements, installed once into a content-addressed layer.

A function may declare requirements (requirements.txt text). They are normalised (one PEP 508
requirement per line, names canonical, sorted, no pip options and no direct URLs: a URL or a
local path would let an upload make the builder fetch anything) and keyed by the sha256 of that
text, the installer's index settings and the interpreter and platforms it installs for. One layer document per key
(`layer:<sha256>` in the functions table) records its build: pending -> building -> ready |
failed, with the log's tail and, when ready, the stored archive's size. Every function asking for
the same set shares the layer: the second one is ready at once, and a key is built again only
after its build failed (a deploy retries it).

The layer's files sit in the code store under layers/<sha256>.tar.gz; workers unpack them once per
host and mount them read-only into the sandbox (nanogrid/worker/layers.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound
from nanogrid.storage import BlobStore, DocumentTable

MAX_REQUIREMENTS = 200
MAX_REQUIREMENTS_BYTES = 64 * 1024
LOG_KEEP = 32 * 1024  # the tail of a build's log kept in its document
# What the layers are installed for: the runtime image's interpreter and the platforms its C
# library and the manylinux baseline it carries can load (nanogrid/sandbox/image.py). Part of
# every layer's key, so a runtime of another Python gets layers of its own; the API computes the
# key from these and the index settings alone, which controllers and workers share.
PYTHON_VERSION = "3.11"
IMPLEMENTATION = "cp"
ABI = "cp311"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "linux_x86_64")
LAYER_FORMAT = 1  # bumped when the way a layer is made changes, so old layers are not reused


class Status:
    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class RequirementsError(ValueError):
    """The requirements cannot be accepted; the message says which line and why."""


def normalise(text: str) -> str:
    """The requirements as one canonical text: each requirement on a line, sorted; '' for none."""
    if not isinstance(text, str):
        raise RequirementsError("requirements must be text (the contents of a requirements.txt)")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_REQUIREMENTS_BYTES:
        raise RequirementsError(f"requirements are longer than {MAX_REQUIREMENTS_BYTES} bytes")
    lines: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            raise RequirementsError(f"requirements line {number}: pip options ({line.split()[0]}) are not accepted; "
                                    "the installation's index settings apply to every build")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise RequirementsError(f"requirements line {number}: {line!r} is not a requirement: {exc}") from None
        if requirement.url:
            raise RequirementsError(f"requirements line {number}: direct references ({requirement.url}) are not "
                                    "accepted; publish the package to the installation's index")
        name = canonicalize_name(requirement.name)
        requirement.name = name
        if name in lines:
            raise RequirementsError(f"requirements line {number}: {name} is listed twice")
        lines[name] = str(requirement)
    if len(lines) > MAX_REQUIREMENTS:
        raise RequirementsError(f"{len(lines)} requirements; the limit is {MAX_REQUIREMENTS}")
    return "\n".join(lines[name] for name in sorted(lines))


def without_credentials(url: str) -> str:
    """The URL with any user:password@ removed: what documents, logs and keys may show."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def layer_key(requirements: str, settings: Settings) -> str:
    """The sha256 naming the layer of these (normalised) requirements on this installation."""
    basis = {
        "format": LAYER_FORMAT, "requirements": requirements,
        "index": without_credentials(settings.pip_index_url),
        "extra_index": without_credentials(settings.pip_extra_index_url),
        "find_links": settings.pip_find_links, "no_index": settings.pip_no_index,
        "target": [PYTHON_VERSION, IMPLEMENTATION, ABI, *PLATFORMS],
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def archive_key(sha: str) -> str:
    return f"layers/{sha}.tar.gz"


def _doc_id(sha: str) -> str:
    return f"layer:{sha}"


@dataclass(frozen=True)
class Claim:
    """A build this process holds: the document's revision it wrote, for the conditional finish."""

    sha: str
    rev: int
    requirements: str


class LayerRegistry:
    def __init__(self, table: DocumentTable, store: BlobStore):
        self.table = table
        self.store = store

    def get(self, sha: str) -> dict:
        return self.table.get(_doc_id(sha))

    def request(self, sha: str, requirements: str) -> bool:
        """Make sure the layer exists or will be built; True when a build message must be sent: a
        new layer, one not built yet (sending again is harmless: one builder claims it), one whose
        builder died (its lease ran out), or one whose build failed (it is tried again)."""
        now = time.time()
        doc = {"layer_sha256": sha, "rev": 1, "status": Status.PENDING, "requirements": requirements,
               "created_at": now, "updated_at": now, "size_bytes": None, "error": None, "log": ""}
        try:
            self.table.insert(_doc_id(sha), doc)
            return True
        except Conflict:
            pass
        current = self.get(sha)
        if current["status"] != Status.FAILED:
            return needs_build(current, now)
        retry = {**current, "status": Status.PENDING, "error": None, "log": "", "rev": current["rev"] + 1,
                 "updated_at": now}
        return self.table.replace(_doc_id(sha), retry, current["rev"])

    def claim(self, sha: str, lease_s: float) -> Claim | None:
        """Take the build (pending, or building under a lease that ran out); None if it is not ours."""
        try:
            current = self.get(sha)
        except NotFound:
            return None
        now = time.time()
        if current["status"] == Status.BUILDING and current.get("lease_until", 0) > now:
            return None
        if current["status"] not in (Status.PENDING, Status.BUILDING):
            return None
        taken = {**current, "status": Status.BUILDING, "rev": current["rev"] + 1, "updated_at": now,
                 "lease_until": now + lease_s, "build_started_at": now}
        if not self.table.replace(_doc_id(sha), taken, current["rev"]):
            return None
        return Claim(sha, taken["rev"], current["requirements"])

    def finish(self, claim: Claim, *, ok: bool, log: str, size_bytes: int | None = None,
               error: str | None = None) -> dict | None:
        """Record the build's end, if the claim still holds; the document, or None."""
        current = self.get(claim.sha)
        if current["rev"] != claim.rev:
            return None
        now = time.time()
        done = {**current, "status": Status.READY if ok else Status.FAILED, "rev": claim.rev + 1,
                "updated_at": now, "log": log[-LOG_KEEP:], "size_bytes": size_bytes, "error": error,
                "build_s": round(now - current.get("build_started_at", now), 3)}
        done.pop("lease_until", None)
        return done if self.table.replace(_doc_id(claim.sha), done, claim.rev) else None

    def delete(self, sha: str) -> None:
        self.store.delete(archive_key(sha))
        self.table.delete(_doc_id(sha))


def needs_build(doc: dict, now: float) -> bool:
    """Whether no builder holds this layer and it is not built: its build message must be sent."""
    if doc["status"] == Status.PENDING:
        return True
    return doc["status"] == Status.BUILDING and doc.get("lease_until", 0) <= now


def build_view(doc: dict | None) -> dict | None:
    """The API's view of a function's build (None: it has no requirements)."""
    if doc is None:
        return None
    return {"status": doc["status"], "layer_sha256": doc["layer_sha256"], "size_bytes": doc.get("size_bytes"),
            "error": doc.get("error")}
