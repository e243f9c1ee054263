"""A DocumentTable in one DynamoDB table.

Each item is {key_name: doc_id, "rev": N, "doc": "<the whole document as JSON>"}. Only the key
and rev are DynamoDB attributes, because they are all a condition needs; keeping the document
as one JSON string keeps its types exactly as the SQLite backend returns them (no Decimal, no
empty-set rules) and makes a write one item, not a diff. An index is a global secondary index
named after it, on the attributes `<index>_pk` (the partition) and `<index>_sk` (the sort key),
which an item carries only while it is in the index (sparse).
"""

from __future__ import annotations

import json
from typing import Any

from nanogrid import aws
from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound
from nanogrid.storage import UNTIL_SUFFIX, Entries, Page, sort_key


TTL_ATTRIBUTE = "expires_at"  # the table's time-to-live attribute (Terraform, provisioning)


def index_attributes(index: str) -> tuple[str, str]:
    """The partition and sort key attributes of an index's GSI."""
    return f"{index}_pk", f"{index}_sk"


class DynamoDBTable:
    def __init__(self, settings: Settings, table_name: str, key_name: str, indexes: tuple[str, ...] = (),
                 expires: bool = False):
        self.settings = settings
        self.table_name = table_name
        self.key_name = key_name
        self.indexes = indexes
        self.expires = expires

    def _dynamodb(self) -> Any:
        # Looked up on every call so a table object created before a fork uses the child's client.
        return aws.client(self.settings, "dynamodb")

    def _key(self, doc_id: str) -> dict:
        return {self.key_name: {"S": doc_id}}

    def _item(self, doc_id: str, doc: dict, entries: Entries | None) -> dict:
        item = {**self._key(doc_id), "rev": {"N": str(int(doc["rev"]))}, "doc": {"S": json.dumps(doc)}}
        if self.expires and doc.get("expires_at") is not None:
            item[TTL_ATTRIBUTE] = {"N": str(int(doc["expires_at"]))}  # the table's TTL deletes it then
        for index, entry in (entries or {}).items():
            if index not in self.indexes:
                raise ValueError(f"table {self.table_name} has no index {index!r}")
            if entry is not None:
                pk, sk = index_attributes(index)
                item[pk], item[sk] = {"S": entry.partition}, {"S": sort_key(entry.sort, doc_id)}
        return item

    def _where(self, operation: str, doc_id: str) -> str:
        return f"DynamoDB {operation} {self.table_name}[{doc_id}]"

    def _put_if(self, operation: str, doc_id: str, doc: dict, entries: Entries | None, condition: str,
                **expression) -> bool:
        """Write the document (and its index entries) if the condition holds; whether it did."""
        dynamodb = self._dynamodb()
        with aws.unavailable_on_outage(self._where(operation, doc_id)):
            try:
                dynamodb.put_item(TableName=self.table_name, Item=self._item(doc_id, doc, entries),
                                  ConditionExpression=condition, **expression)
            except dynamodb.exceptions.ConditionalCheckFailedException:
                return False
        return True

    def insert(self, doc_id: str, doc: dict, entries: Entries | None = None) -> None:
        if not self._put_if("insert", doc_id, doc, entries, "attribute_not_exists(#key)",
                            ExpressionAttributeNames={"#key": self.key_name}):
            raise Conflict(doc_id)

    def get(self, doc_id: str) -> dict:
        with aws.unavailable_on_outage(self._where("get", doc_id)):
            # Strongly consistent, like SQLite: a compare-and-set that follows a read must see
            # the latest rev, or it fails for no reason.
            response = self._dynamodb().get_item(TableName=self.table_name, Key=self._key(doc_id), ConsistentRead=True)
        if "Item" not in response:
            raise NotFound(doc_id)
        return json.loads(response["Item"]["doc"]["S"])

    def replace(self, doc_id: str, doc: dict, expected_rev: int, entries: Entries | None = None) -> bool:
        # A missing item has no rev, so the condition fails and nothing is created: replace never
        # inserts, as in SQLite.
        return self._put_if("replace", doc_id, doc, entries, "#rev = :expected", ExpressionAttributeNames={"#rev": "rev"},
                            ExpressionAttributeValues={":expected": {"N": str(int(expected_rev))}})

    def delete(self, doc_id: str) -> None:
        with aws.unavailable_on_outage(self._where("delete", doc_id)):
            self._dynamodb().delete_item(TableName=self.table_name, Key=self._key(doc_id))

    def scan(self) -> list[dict]:
        items = []
        with aws.unavailable_on_outage(f"DynamoDB scan {self.table_name}"):
            # A scan page stops at 1 MB; the paginator follows LastEvaluatedKey to the end.
            pages = self._dynamodb().get_paginator("scan").paginate(TableName=self.table_name, ConsistentRead=True)
            for page in pages:
                items.extend(page["Items"])
        # Sorted by id to match the SQLite backend; DynamoDB returns hash order.
        items.sort(key=lambda item: item[self.key_name]["S"])
        return [json.loads(item["doc"]["S"]) for item in items]

    def query(self, index: str, partition: str, *, since: float | None = None, until: float | None = None,
              newest_first: bool = False, limit: int = 100, cursor: str | None = None) -> Page:
        if index not in self.indexes:
            raise ValueError(f"table {self.table_name} has no index {index!r}")
        pk, sk = index_attributes(index)
        condition, values = "#pk = :partition", {":partition": {"S": partition}}
        if since is not None:
            values[":since"] = {"S": sort_key(since, "")}
        if until is not None:
            values[":until"] = {"S": sort_key(until, UNTIL_SUFFIX)}
        if since is not None and until is not None:
            condition += " AND #sk BETWEEN :since AND :until"
        elif since is not None:
            condition += " AND #sk >= :since"
        elif until is not None:
            condition += " AND #sk <= :until"
        request = {"TableName": self.table_name, "IndexName": index, "KeyConditionExpression": condition,
                   "ExpressionAttributeNames": {"#pk": pk, "#sk": sk}, "ExpressionAttributeValues": values,
                   "ScanIndexForward": not newest_first}
        if cursor is not None:
            doc_id = cursor.rsplit("|", 1)[1]
            request["ExclusiveStartKey"] = {**self._key(doc_id), pk: {"S": partition}, sk: {"S": cursor}}
        if "#sk" not in condition:
            del request["ExpressionAttributeNames"]["#sk"]
        items: list[dict] = []
        with aws.unavailable_on_outage(f"DynamoDB query {self.table_name}/{index}"):
            # One more than a page, to know whether another follows; a response page stops at 1 MB.
            while len(items) <= limit:
                response = self._dynamodb().query(**request, Limit=limit + 1 - len(items))
                items.extend(response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    break
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        more = len(items) > limit
        items = items[:limit]
        return Page([json.loads(item["doc"]["S"]) for item in items], items[-1][sk]["S"] if more and items else None)

    def expire(self, now: float) -> list[str]:
        return []  # the table's TTL on expires_at deletes them (within about two days of the time)
