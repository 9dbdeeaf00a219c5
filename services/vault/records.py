"""How a memory is laid out in the index: point ids, payload fields, and the roles of points.

Each memory has a *head* point (its current version, searchable) at a fixed id; every earlier
version is a *version* point; a deleted memory leaves a *tombstone* head (no vectors) so a late
replay of an old write cannot bring it back.

A point's payload is the record (the protobuf, sealed) plus plain fields for filters. A memory's
index context (the conversation around a short turn, which only its index key is read from) is
sealed apart: it is over half a record's bytes, and a search, which never returns it, does not
read it. Usage counts are not in the index (usage.py).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from enum import StrEnum

from google.protobuf.timestamp_pb2 import Timestamp

from memos.type.v1 import memory_pb2
from services.common import states
from services.common.places import place, place_key
from services.common.sealing import Erased, SubjectKeys, seal, subject_key_id, unseal

_PLAINTEXT = memory_pb2.MemoryKind.Name(memory_pb2.MEMORY_KIND_PLAINTEXT)
_LIVE = frozenset(memory_pb2.MemoryState.Name(s) for s in states.LIVE)
_NAMESPACE = uuid.UUID("6f1c2a0e-4d0b-5b0e-9a57-6d656d6f7321")


class Role(StrEnum):
    HEAD = "head"
    VERSION = "version"
    TOMBSTONE = "tombstone"


# On a live plaintext head, its cube: the points a plain search selects, in one condition
# (index.memory_filter) instead of four (cube, role, state, kind). Every list of a search checks
# its filter on each point of the cube: four conditions cost 0.4 ms of a LongMemEval search,
# and more in a shard filled by the running process.
LIVE_IN = "live_in"


def head_id(cube_id: str, memory_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cube_id}/{memory_id}"))


def version_id(cube_id: str, memory_id: str, version: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{cube_id}/{memory_id}@{version}"))


def _rfc3339(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def turn_keys(memory: memory_pb2.Memory) -> list[str]:
    """The turns a memory carries, each as "<session id>#<turn id>"."""
    return [f"{s.session_id}#{s.turn_id}" for s in memory.provenance.sources if s.turn_id]


def _context_aad(key_id: str) -> str:
    # Sealed under its own associated data: a context cannot be passed off as a record.
    return f"{key_id}/index_context"


def payload(memory: memory_pb2.Memory, role: Role, keys: SubjectKeys) -> dict[str, object]:
    """Filterable fields plus the whole record (the protobuf without its usage and index
    context, sealed with its subject key, base64) and the index context (sealed likewise) for
    lossless reads. The key must be known to ``keys`` already (the applier fetched it)."""
    sealed = memory_pb2.Memory()
    sealed.CopyFrom(memory)
    sealed.ClearField("usage")
    sealed.ClearField("index_context")
    key_id = subject_key_id(memory.cube_id, memory.provenance.principal)
    key = keys.cached(key_id)
    if key is None:
        raise Erased(key_id)
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
        "turns": turn_keys(memory),
        "parents": list(memory.lineage.parent_names),
        "tags": list(memory.tags),
        "key": key_id,
        "record": base64.b64encode(seal(key_id, key, sealed.SerializeToString())).decode("ascii"),
    }
    if memory.index_context:
        context = seal(_context_aad(key_id), key, memory.index_context.encode())
        fields["context"] = base64.b64encode(context).decode("ascii")
    event_time = _rfc3339(memory.event_time)
    if event_time:
        fields["event_time"] = event_time
    if (at := place(memory)) is not None:
        fields["place"] = place_key(at)
    return with_live_in(fields)


def with_live_in(fields: Mapping[str, object]) -> dict[str, object]:
    """``fields`` with LIVE_IN when they are a live plaintext head's, and without it otherwise."""
    out = {key: value for key, value in fields.items() if key != LIVE_IN}
    if fields.get("role") == Role.HEAD and fields.get("state") in _LIVE and fields.get("kind") == _PLAINTEXT:
        out[LIVE_IN] = fields["cube"]
    return out


def tombstone(cube_id: str, memory_id: str, version: int) -> dict[str, object]:
    return {"cube": cube_id, "memory_id": memory_id, "role": Role.TOMBSTONE.value, "version": version}


# What a search reads: the memory id and the record, without the index context (never
# returned by a search). A whole payload is read where the context is wanted.
RECORD_FIELDS = ("memory_id", "record", "key")


def memory_of(fields: dict[str, object], keys: SubjectKeys) -> memory_pb2.Memory:
    """The record, opened; Erased when its subject key was destroyed."""
    memory = memory_pb2.Memory()
    read_into(memory, fields, keys)
    return memory


def read_into(memory: memory_pb2.Memory, fields: Mapping[str, object], keys: SubjectKeys) -> None:
    """``memory`` made the record, opened in place (no copy into a reply), without its usage
    (usage.py), with its index context when ``fields`` hold it; Erased when its subject key was
    destroyed."""
    data = binascii.a2b_base64(str(fields["record"]))
    context = binascii.a2b_base64(str(fields["context"])) if fields.get("context") else b""
    key_id = fields.get("key")
    if key_id:
        key = keys.cached(str(key_id))
        if key is None:
            raise Erased(str(key_id))
        data = unseal(str(key_id), key, data)
        if context:
            context = unseal(_context_aad(str(key_id)), key, context)
    memory.ParseFromString(data)
    if context:
        memory.index_context = context.decode()


def readable(payloads: list[dict[str, object]], keys: SubjectKeys) -> list[memory_pb2.Memory]:
    """The records that can still be opened (an erased subject's points may linger briefly);
    tombstones have none."""
    out = []
    for fields in payloads:
        if "record" not in fields:
            continue
        try:
            out.append(memory_of(fields, keys))
        except Erased:
            continue
    return out
