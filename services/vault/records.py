"""How a memory is laid out in the index: point ids, payload fields, and the roles of points.

Each memory has a *head* point (its current version, searchable) at a fixed id; every earlier
version is a *version* point; a deleted memory leaves a *tombstone* head (no vectors) so a late
replay of an old write cannot bring it back.
"""

from __future__ import annotations

import base64
import uuid
from enum import StrEnum

from google.protobuf.timestamp_pb2 import Timestamp

from memos.type.v1 import memory_pb2

_NAMESPACE = uuid.UUID("6f1c2a0e-4d0b-5b0e-9a57-6d656d6f7321")


class Role(StrEnum):
    HEAD = "head"
    VERSION = "version"
    TOMBSTONE = "tombstone"


def head_id(cube_id: str, memory_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cube_id}/{memory_id}"))


def version_id(cube_id: str, memory_id: str, version: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cube_id}/{memory_id}@{version}"))


def _rfc3339(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def payload(memory: memory_pb2.Memory, role: Role, *, usage_seq: int = 0) -> dict[str, object]:
    """Filterable fields plus the whole record (the protobuf, base64) for lossless reads.

    ``usage_seq`` is the last MEMOS_USAGE message folded into the head's usage counts.
    """
    sources = memory.provenance.sources
    fields: dict[str, object] = {
        "cube": memory.cube_id,
        "memory_id": memory.memory_id,
        "role": role.value,
        "version": memory.version,
        "kind": memory_pb2.MemoryKind.Name(memory.kind or memory_pb2.MEMORY_KIND_PLAINTEXT),
        "type": memory_pb2.MemoryType.Name(memory.type),
        "state": memory_pb2.MemoryState.Name(memory.state),
        "speaker": memory.speaker,
        "session_id": sources[0].session_id if sources else "",
        "tags": list(memory.tags),
        "record": base64.b64encode(memory.SerializeToString()).decode("ascii"),
    }
    if usage_seq:
        fields["usage_seq"] = usage_seq
    event_time = _rfc3339(memory.event_time)
    if event_time:
        fields["event_time"] = event_time
    return fields


def usage_seq(fields: dict[str, object] | None) -> int:
    return int(fields.get("usage_seq", 0)) if fields else 0  # type: ignore[call-overload]


def tombstone(cube_id: str, memory_id: str, version: int) -> dict[str, object]:
    return {"cube": cube_id, "memory_id": memory_id, "role": Role.TOMBSTONE.value, "version": version}


def memory_of(fields: dict[str, object]) -> memory_pb2.Memory:
    memory = memory_pb2.Memory()
    memory.ParseFromString(base64.b64decode(str(fields["record"])))
    return memory
