"""Long-running operations (distillation jobs): their state in the MEMOS_OPERATIONS bucket.

The lifecycle creates one when it queues a job; the worker that runs the job updates it; clients
poll it with ``LifecycleService.GetOperation``.
"""

from __future__ import annotations

import hashlib

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from memos.lifecycle.v1 import lifecycle_pb2
from memos_sdk.wire import Bucket

from .clock import now_timestamp
from .errors import InvalidArgument, NotFound

PREFIX = "operations/"
State = lifecycle_pb2.OperationState


def operation_id(*parts: str) -> str:
    """Deterministic, so a retried request names the same operation."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def parse_name(name: str) -> str:
    op_id = name[len(PREFIX) :] if name.startswith(PREFIX) else ""
    if not (len(op_id) == 32 and all(c in "0123456789abcdef" for c in op_id)):
        raise InvalidArgument(
            f"{name[:80]!r} is not an operation name (operations/<id>)", reason="MALFORMED_NAME"
        )
    return op_id


class Operations:
    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext) -> Operations:
        try:
            bucket = await js.key_value(Bucket.OPERATIONS)
        except BucketNotFoundError:
            bucket = await js.create_key_value(
                KeyValueConfig(
                    bucket=Bucket.OPERATIONS, history=1, storage=StorageType.FILE, ttl=30 * 24 * 3600
                )
            )
        return cls(bucket)

    async def find(self, name: str) -> lifecycle_pb2.Operation | None:
        try:
            entry = await self._bucket.get(parse_name(name))
        except KeyNotFoundError:
            return None
        return lifecycle_pb2.Operation.FromString(entry.value) if entry and entry.value else None

    async def get(self, name: str) -> lifecycle_pb2.Operation:
        found = await self.find(name)
        if found is None:
            raise NotFound(f"{name} not found", reason="OPERATION_NOT_FOUND")
        return found

    async def put(self, operation: lifecycle_pb2.Operation) -> lifecycle_pb2.Operation:
        now = now_timestamp()
        if not operation.HasField("create_time"):
            operation.create_time.CopyFrom(now)
        operation.update_time.CopyFrom(now)
        await self._bucket.put(parse_name(operation.name), operation.SerializeToString())
        return operation
