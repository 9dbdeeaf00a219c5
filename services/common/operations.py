"""Long-running operations (distillation jobs): their state in the MEMOS_OPERATIONS bucket.

The lifecycle creates one when it queues a job; the worker that runs the job updates it; clients
poll it with ``LifecycleService.GetOperation``.
"""

from __future__ import annotations

import hashlib
import re

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from memos.lifecycle.v1 import lifecycle_pb2
from memos_sdk.wire import Bucket

from .buckets import open_bucket
from .clock import now_timestamp
from .errors import InvalidArgument, NotFound

State = lifecycle_pb2.OperationState
_NAME = re.compile(r"^cubes/(?P<cube>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/operations/(?P<id>[0-9a-f]{32})$")


def operation_id(*parts: str) -> str:
    """Deterministic, so a retried request names the same operation."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def operation_name(cube_id: str, op_id: str) -> str:
    return f"cubes/{cube_id}/operations/{op_id}"


def parse_name(name: str) -> tuple[str, str]:
    """cubes/{cube}/operations/{id} -> (cube_id, operation id)."""
    match = _NAME.match(name)
    if not match:
        raise InvalidArgument(
            f"{name[:120]!r} is not an operation name (cubes/{{cube}}/operations/{{32 hex digits}})",
            reason="MALFORMED_NAME",
            field="name",
        )
    return match["cube"], match["id"]


class Operations:
    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext) -> Operations:
        return cls(await open_bucket(js, Bucket.OPERATIONS))

    async def find(self, name: str) -> lifecycle_pb2.Operation | None:
        try:
            entry = await self._bucket.get(parse_name(name)[1])
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
        await self._bucket.put(parse_name(operation.name)[1], operation.SerializeToString())
        return operation
