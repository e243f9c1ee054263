"""Create the buckets and tables NanoGrid needs, when they are missing.

In production Terraform owns these resources; this is for local servers (moto,
gcp-storage-emulator), `nanogrid dev` and tests. Every step accepts a resource that already
exists, so it is safe to run on each start. The provider SDKs are only touched through the
helpers in aws.py and gcs.py, and only for the backends the settings select.
"""

from __future__ import annotations

from nanogrid.config import Settings

TABLE_READY_POLL_S = 1
TABLE_READY_MAX_POLLS = 60


def ensure_resources(settings: Settings) -> None:
    if settings.storage == "aws":
        _ensure_buckets(settings)
        _ensure_tables(settings)
    if settings.archive == "gcs":
        from nanogrid.storage import gcs

        gcs.create_bucket_if_missing(settings)


def _ensure_buckets(settings: Settings) -> None:
    from nanogrid import aws

    s3 = aws.client(settings, "s3")
    # us-east-1 is the one region that rejects an explicit LocationConstraint.
    location = {} if settings.aws_region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": settings.aws_region}
    }
    for bucket in (settings.s3_code_bucket, settings.s3_user_data_bucket):
        with aws.unavailable_on_outage(f"S3 create bucket {bucket}"):
            try:
                s3.create_bucket(Bucket=bucket, **location)
            except s3.exceptions.BucketAlreadyOwnedByYou:
                pass
    # Outputs are user data: versioning keeps an overwritten or deleted object recoverable.
    with aws.unavailable_on_outage(f"S3 enable versioning on {settings.s3_user_data_bucket}"):
        s3.put_bucket_versioning(
            Bucket=settings.s3_user_data_bucket,
            VersioningConfiguration={"Status": "Enabled"},
        )


def _ensure_tables(settings: Settings) -> None:
    from nanogrid import aws
    from nanogrid.storage import dynamodb_tables
    from nanogrid.storage.dynamodb import TTL_ATTRIBUTE, index_attributes

    dynamodb = aws.client(settings, "dynamodb")
    for table, spec in dynamodb_tables(settings).items():
        attributes = [{"AttributeName": spec.key, "AttributeType": "S"}]
        indexes = []
        for index in spec.indexes:
            pk, sk = index_attributes(index)
            attributes += [{"AttributeName": pk, "AttributeType": "S"}, {"AttributeName": sk, "AttributeType": "S"}]
            indexes.append({"IndexName": index, "Projection": {"ProjectionType": "ALL"},
                            "KeySchema": [{"AttributeName": pk, "KeyType": "HASH"},
                                          {"AttributeName": sk, "KeyType": "RANGE"}]})
        with aws.unavailable_on_outage(f"DynamoDB create table {table}"):
            try:
                dynamodb.create_table(
                    TableName=table,
                    AttributeDefinitions=attributes,
                    KeySchema=[{"AttributeName": spec.key, "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                    **({"GlobalSecondaryIndexes": indexes} if indexes else {}),
                )
            except dynamodb.exceptions.ResourceInUseException:
                _add_missing_indexes(dynamodb, table, attributes, indexes)
            # Real DynamoDB takes seconds to make a new table ACTIVE; writes before then fail.
            dynamodb.get_waiter("table_exists").wait(
                TableName=table,
                WaiterConfig={"Delay": TABLE_READY_POLL_S, "MaxAttempts": TABLE_READY_MAX_POLLS},
            )
            if spec.expires:
                ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
                if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                    dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification={
                        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})


def _add_missing_indexes(dynamodb, table: str, attributes: list[dict], indexes: list[dict]) -> None:
    """A table made before an index existed gets it (DynamoDB backfills it in the background)."""
    present = {i["IndexName"] for i in dynamodb.describe_table(TableName=table)["Table"].get(
        "GlobalSecondaryIndexes", [])}
    for index in indexes:
        if index["IndexName"] not in present:
            dynamodb.update_table(TableName=table, AttributeDefinitions=attributes,
                                  GlobalSecondaryIndexUpdates=[{"Create": index}])
