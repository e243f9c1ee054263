"""Secret stores: a tenant's named secrets, written by the API and read only by the workers.

Two backends behind one small interface (nanogrid.storage.SecretStore):
- AWS Secrets Manager in production (nanogrid/storage/secretsmanager.py): one secret per tenant
  and name, `<NANOGRID_SECRETS_PREFIX><tenant>/<name>`, encrypted by the service's KMS key;
- in the embedded default, documents of the functions table holding the value encrypted with
  Fernet (AES-128-CBC with an HMAC-SHA256, from `cryptography`) under NANOGRID_SECRETS_KEY, which
  `nanogrid dev` makes once in its data directory. Without that key the store refuses, rather
  than keeping a value in the clear.
Listing gives names and dates, never values.
"""

from __future__ import annotations

import time

from cryptography.fernet import Fernet, InvalidToken

from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotConfigured, NotFound, Unavailable
from nanogrid.storage import DocumentTable

# A key: python3 -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"


def _doc_id(tenant: str, name: str) -> str:
    return f"secret:{tenant}:{name}"


class LocalSecretStore:
    def __init__(self, settings: Settings, table: DocumentTable):
        self.settings = settings
        self.table = table

    def _fernet(self) -> Fernet:
        if not self.settings.secrets_key:
            raise NotConfigured("this installation keeps no secrets: its operator has not set NANOGRID_SECRETS_KEY "
                                "(the embedded secret store's encryption key)")
        try:
            return Fernet(self.settings.secrets_key.encode())
        except ValueError:
            raise NotConfigured("this installation's NANOGRID_SECRETS_KEY is not a Fernet key (32 url-safe base64 "
                                "bytes)") from None

    def put(self, tenant: str, name: str, value: str) -> dict:
        token = self._fernet().encrypt(value.encode()).decode()
        now = time.time()
        doc = {"rev": 1, "tenant": tenant, "secret_name": name, "ciphertext": token, "created_at": now,
               "updated_at": now}
        for _ in range(5):
            try:
                self.table.insert(_doc_id(tenant, name), doc)
                return _metadata(doc)
            except Conflict:
                pass
            try:
                current = self.table.get(_doc_id(tenant, name))
            except NotFound:
                continue
            changed = {**current, "ciphertext": token, "updated_at": now, "rev": current["rev"] + 1}
            if self.table.replace(_doc_id(tenant, name), changed, current["rev"]):
                return _metadata(changed)
        raise Conflict(f"secret {name} was changed concurrently; retry")

    def _doc(self, tenant: str, name: str) -> dict:
        try:
            return self.table.get(_doc_id(tenant, name))
        except NotFound:
            raise NotFound(f"secret {name}") from None

    def get(self, tenant: str, name: str) -> str:
        doc = self._doc(tenant, name)
        try:
            return self._fernet().decrypt(doc["ciphertext"].encode()).decode()
        except InvalidToken:
            raise Unavailable(f"secret {name} cannot be decrypted with this NANOGRID_SECRETS_KEY") from None

    def metadata(self, tenant: str, name: str) -> dict:
        return _metadata(self._doc(tenant, name))

    def list(self, tenant: str) -> list[dict]:
        docs = [d for d in self.table.scan() if "secret_name" in d and d.get("tenant") == tenant]
        return sorted((_metadata(d) for d in docs), key=lambda m: m["name"])

    def delete(self, tenant: str, name: str) -> None:
        self._doc(tenant, name)  # NotFound for one that is not there
        self.table.delete(_doc_id(tenant, name))


def _metadata(doc: dict) -> dict:
    return {"name": doc["secret_name"], "created_at": doc["created_at"], "updated_at": doc["updated_at"]}
