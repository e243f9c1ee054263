"""A DocumentTable in one DynamoDB table.

Each item is {key_name: doc_id, "rev": N, "doc": "<the whole document as JSON>"}. Only the key
and rev are DynamoDB attributes, because they are all a condition needs; keeping the document
as one JSON string keeps its types exactly as the SQLite backend returns them (no Decimal, no
empty-set rules) and makes a write one item, not a diff.
"""

from __future__ import annotations

import json
from typing import Any

from nanogrid.config import Settings
from nanogrid.errors import Conflict, NotFound
from nanogrid import aws


class DynamoDBTable:
    def __init__(self, settings: Settings, table_name: str, key_name: str):
        self.settings = settings
        self.table_name = table_name
        self.key_name = key_name

    def _dynamodb(self) -> Any:
        # Looked up on every call so a table object created before a fork uses the child's client.
        return aws.client(self.settings, "dynamodb")

    def _key(self, doc_id: str) -> dict:
        return {self.key_name: {"S": doc_id}}

    def _item(self, doc_id: str, doc: dict) -> dict:
        return {**self._key(doc_id), "rev": {"N": str(int(doc["rev"]))}, "doc": {"S": json.dumps(doc)}}

    def _where(self, operation: str, doc_id: str) -> str:
        return f"DynamoDB {operation} {self.table_name}[{doc_id}]"

    def _put_if(self, operation: str, doc_id: str, doc: dict, condition: str, **expression) -> bool:
        """Write the document if the condition holds; whether it did."""
        dynamodb = self._dynamodb()
        with aws.unavailable_on_outage(self._where(operation, doc_id)):
            try:
                dynamodb.put_item(TableName=self.table_name, Item=self._item(doc_id, doc),
                                  ConditionExpression=condition, **expression)
            except dynamodb.exceptions.ConditionalCheckFailedException:
                return False
        return True

    def insert(self, doc_id: str, doc: dict) -> None:
        if not self._put_if("insert", doc_id, doc, "attribute_not_exists(#key)",
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

    def replace(self, doc_id: str, doc: dict, expected_rev: int) -> bool:
        # A missing item has no rev, so the condition fails and nothing is created: replace never
        # inserts, as in SQLite.
        return self._put_if("replace", doc_id, doc, "#rev = :expected", ExpressionAttributeNames={"#rev": "rev"},
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
