"""The secret store on AWS Secrets Manager: `<NANOGRID_SECRETS_PREFIX><tenant>/<name>`, one secret each."""

from __future__ import annotations

from typing import Any

from nanogrid import aws
from nanogrid.config import Settings
from nanogrid.errors import NotFound


class SecretsManagerStore:
    def __init__(self, settings: Settings):
        self.settings = settings

    def _client(self) -> Any:
        return aws.client(self.settings, "secretsmanager")

    def _id(self, tenant: str, name: str) -> str:
        return f"{self.settings.secrets_prefix}{tenant}/{name}"

    def put(self, tenant: str, name: str, value: str) -> dict:
        client = self._client()
        with aws.unavailable_on_outage(f"Secrets Manager put {name}"):
            try:
                client.put_secret_value(SecretId=self._id(tenant, name), SecretString=value)
            except client.exceptions.ResourceNotFoundException:
                client.create_secret(Name=self._id(tenant, name), SecretString=value,
                                     Tags=[{"Key": "nanogrid:tenant", "Value": tenant}])
        return self.metadata(tenant, name)

    def get(self, tenant: str, name: str) -> str:
        client = self._client()
        with aws.unavailable_on_outage(f"Secrets Manager get {name}"):
            try:
                return client.get_secret_value(SecretId=self._id(tenant, name))["SecretString"]
            except client.exceptions.ResourceNotFoundException:
                raise NotFound(f"secret {name}") from None

    def metadata(self, tenant: str, name: str) -> dict:
        client = self._client()
        with aws.unavailable_on_outage(f"Secrets Manager describe {name}"):
            try:
                described = client.describe_secret(SecretId=self._id(tenant, name))
            except client.exceptions.ResourceNotFoundException:
                raise NotFound(f"secret {name}") from None
        return _metadata(name, described)

    def list(self, tenant: str) -> list[dict]:
        prefix = self._id(tenant, "")
        found = []
        with aws.unavailable_on_outage("Secrets Manager list"):
            pages = self._client().get_paginator("list_secrets").paginate(
                Filters=[{"Key": "name", "Values": [prefix]}])
            for page in pages:
                for secret in page["SecretList"]:
                    if secret["Name"].startswith(prefix) and "/" not in secret["Name"][len(prefix):]:
                        found.append(_metadata(secret["Name"][len(prefix):], secret))
        return sorted(found, key=lambda m: m["name"])

    def delete(self, tenant: str, name: str) -> None:
        # A forced delete of a secret that is not there succeeds silently: look first, for the 404.
        self.metadata(tenant, name)
        client = self._client()
        with aws.unavailable_on_outage(f"Secrets Manager delete {name}"):
            try:
                client.delete_secret(SecretId=self._id(tenant, name), ForceDeleteWithoutRecovery=True)
            except client.exceptions.ResourceNotFoundException:
                raise NotFound(f"secret {name}") from None


def _metadata(name: str, described: dict) -> dict:
    created = described.get("CreatedDate")
    updated = described.get("LastChangedDate") or created
    return {"name": name, "created_at": created.timestamp() if created else None,
            "updated_at": updated.timestamp() if updated else None}
