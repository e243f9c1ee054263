"""A BlobStore in one S3 bucket: code bundles and large run outputs."""

from __future__ import annotations

from typing import Any

from nanogrid.config import Settings
from nanogrid.errors import NotFound
from nanogrid import aws


class S3BlobStore:
    def __init__(self, settings: Settings, bucket: str):
        self.settings = settings
        self.bucket = bucket

    def _s3(self) -> Any:
        # Looked up on every call rather than kept, so a store created before a fork still
        # gets the child's own client.
        return aws.client(self.settings, "s3")

    def put(self, key: str, data: bytes) -> None:
        with aws.unavailable_on_outage(f"S3 put s3://{self.bucket}/{key}"):
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        s3 = self._s3()
        with aws.unavailable_on_outage(f"S3 get s3://{self.bucket}/{key}"):
            try:
                response = s3.get_object(Bucket=self.bucket, Key=key)
            except s3.exceptions.NoSuchKey:
                # S3 answers a missing key with AccessDenied instead when the caller lacks
                # s3:ListBucket, so the IAM policy must grant it for this to be reached.
                raise NotFound(key) from None
            # Reading the body is inside the guard too: a connection can drop mid-stream.
            return response["Body"].read()

    def delete(self, key: str) -> None:
        with aws.unavailable_on_outage(f"S3 delete s3://{self.bucket}/{key}"):
            self._s3().delete_object(Bucket=self.bucket, Key=key)
