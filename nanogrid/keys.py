"""API keys and tenants: the key store behind `nanogrid keys` and the API's bearer authentication.

A key reads `ng_<key id>_<secret>`. The key id is public (it names the key in `nanogrid keys
list`, in logs and in rate-limit counters); the secret is 256 random bits, shown once when the key
is created and stored only as its SHA-256, compared in constant time. Every key belongs to one
tenant: what a request can see and touch is that tenant's functions and jobs, nothing else.

Keys live in a DocumentTable like functions and jobs (DynamoDB NANOGRID_KEYS_TABLE, or the SQLite
table api_keys). Revoking a key keeps its document, marked revoked, so the store never becomes
empty again by accident: once any key was created the API stays closed (see `any_keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from nanogrid.errors import Conflict, NotFound
from nanogrid.storage import DocumentTable

DEFAULT_TENANT = "default"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A tenant's code sits under <tenant>/ in the code store: these prefixes belong to the platform.
RESERVED_TENANTS = frozenset({"layers"})
KEY_PATTERN = re.compile(r"^ng_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
NO_KEYS_CACHE_S = 5.0  # how long a process believes "no key exists" before asking the store again
VERIFIED_CACHE_S = 5.0  # how long a verified key is trusted without a store read (revocation delay)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a tenant, and the key that proved it (None while the API is open)."""

    tenant: str
    key_id: str | None = None


def valid_tenant(tenant: str) -> bool:
    return isinstance(tenant, str) and bool(TENANT_PATTERN.match(tenant)) and tenant not in RESERVED_TENANTS


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, table: DocumentTable):
        self.table = table
        self._lock = threading.Lock()
        self._keys_exist = False  # once True, for the life of the process
        self._no_keys_until = 0.0
        self._verified: dict[str, tuple[float, str, Principal]] = {}

    # -- administration (`nanogrid keys`) ------------------------------------------------------

    def create(self, tenant: str, label: str = "") -> tuple[str, dict]:
        """A new key for tenant: (the key, shown this once; its stored document, without the secret)."""
        if tenant in RESERVED_TENANTS:
            raise ValueError(f"tenant {tenant!r} is reserved (the code store keeps the dependency layers under it)")
        if not valid_tenant(tenant):
            raise ValueError(f"tenant {tenant!r}: expected 1-64 of [A-Za-z0-9_-], starting with a letter or digit")
        for _ in range(5):
            key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
            doc = {"key_id": key_id, "rev": 1, "tenant": tenant, "label": label[:200],
                   "secret_sha256": _digest(secret), "created_at": time.time(), "revoked_at": None}
            try:
                self.table.insert(key_id, doc)
            except Conflict:
                continue
            with self._lock:
                self._keys_exist = True
            return f"ng_{key_id}_{secret}", doc
        raise RuntimeError("could not pick an unused key id")

    def list(self) -> list[dict]:
        return sorted(self.table.scan(), key=lambda d: d["created_at"])

    def revoke(self, key_id: str) -> dict:
        """Mark a key revoked (NotFound when there is no such key); revoking twice changes nothing."""
        for _ in range(10):
            current = self.table.get(key_id)
            if current.get("revoked_at") is not None:
                return current
            doc = {**current, "rev": current["rev"] + 1, "revoked_at": time.time()}
            if self.table.replace(key_id, doc, current["rev"]):
                with self._lock:
                    self._verified.pop(key_id, None)
                return doc
        raise Conflict(f"key {key_id} is being changed concurrently; retry")

    # -- the API's side ------------------------------------------------------------------------

    def any_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count): then every request needs one.

        "Yes" is kept for the life of the process; "no" is asked again after NO_KEYS_CACHE_S, so a
        key created with `nanogrid keys create` closes a running API within that many seconds.
        """
        now = time.monotonic()
        with self._lock:
            if self._keys_exist:
                return True
            if now < self._no_keys_until:
                return False
        exist = bool(self.table.scan())
        with self._lock:
            if exist:
                self._keys_exist = True
            else:
                self._no_keys_until = now + NO_KEYS_CACHE_S
        return exist

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else."""
        match = KEY_PATTERN.match(token)
        if not match:
            return None
        key_id, secret = match.groups()
        digest = _digest(secret)
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(key_id)
        if cached is not None and cached[0] > now and hmac.compare_digest(cached[1], digest):
            return cached[2]
        try:
            doc = self.table.get(key_id)
        except NotFound:
            return None
        if not hmac.compare_digest(str(doc.get("secret_sha256", "")), digest) or doc.get("revoked_at") is not None:
            return None
        principal = Principal(doc["tenant"], key_id)
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key_id] = (now + VERIFIED_CACHE_S, digest, principal)
        return principal


class SigningSecrets:
    """Each tenant's secret for signing its completion callbacks (nanogrid.jobs.callbacks).

    Unlike a key's, the secret is stored as it is: signing needs it, and the tenant reads it
    (GET /callbacks/signing-secret) to check signatures. It lives in the functions table, which
    the workers that sign already read (they have no grant on the keys table). The API makes it
    when it first accepts a callback URL (or is asked for it); rotating replaces it, so signatures
    made before no longer verify.
    """

    def __init__(self, table: DocumentTable):
        self.table = table

    def existing(self, tenant: str) -> dict:
        """The tenant's secret document; NotFound if it has none (the workers' read)."""
        return self.table.get(_signing_id(tenant))

    def get(self, tenant: str) -> dict:
        """The tenant's secret document ({"tenant", "signing_secret", "created_at"}), made now if
        it has none yet."""
        try:
            return self.table.get(_signing_id(tenant))
        except NotFound:
            pass
        doc = {"rev": 1, "tenant": tenant, "signing_secret": _new_signing_secret(), "created_at": time.time()}
        try:
            self.table.insert(_signing_id(tenant), doc)
            return doc
        except Conflict:  # another process made it first
            return self.table.get(_signing_id(tenant))

    def rotate(self, tenant: str) -> dict:
        for _ in range(10):
            current = self.get(tenant)
            doc = {**current, "rev": current["rev"] + 1, "signing_secret": _new_signing_secret(),
                   "created_at": time.time()}
            if self.table.replace(_signing_id(tenant), doc, current["rev"]):
                return doc
        raise Conflict(f"the signing secret of {tenant} is being changed concurrently; retry")


def _signing_id(tenant: str) -> str:
    return f"signing:{tenant}"


def _new_signing_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def public(doc: dict) -> dict:
    """What `nanogrid keys list` shows: never the hash."""
    return {"key_id": doc["key_id"], "tenant": doc["tenant"], "label": doc.get("label") or "",
            "created_at": _iso(doc["created_at"]),
            "revoked_at": _iso(doc["revoked_at"]) if doc.get("revoked_at") is not None else None}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
