"""Decoding memory-change events from the MEMOS_EVENTS stream."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from memos.events.v1 import events_pb2

from .wire import EventKind, Header

PAYLOAD_TYPES: dict[str, type[Message]] = {
    EventKind.MEMORY_CREATED.ce_type: events_pb2.MemoryCreated,
    EventKind.MEMORY_UPDATED.ce_type: events_pb2.MemoryUpdated,
    EventKind.MEMORY_DELETED.ce_type: events_pb2.MemoryDeleted,
    EventKind.KV_BUILT.ce_type: events_pb2.KvBuilt,
    EventKind.ADAPTER_TRAINED.ce_type: events_pb2.AdapterTrained,
    EventKind.CUBE_ERASED.ce_type: events_pb2.CubeErased,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded event: CloudEvents attributes and the protobuf payload."""

    id: str
    type: str
    source: str
    subject: str
    time: str
    payload: Message
    traceparent: str | None = None


def decode_event(headers: dict[str, str] | None, data: bytes) -> Event:
    """Decode a message of the events stream. Raises ValueError for an unknown ce-type."""
    headers = headers or {}
    ce_type = headers.get(Header.CE_TYPE, "")
    payload_type = PAYLOAD_TYPES.get(ce_type)
    if payload_type is None:
        raise ValueError(f"unknown event type {ce_type!r}")
    payload = payload_type()
    payload.ParseFromString(data)
    return Event(
        id=headers.get(Header.CE_ID, ""),
        type=ce_type,
        source=headers.get(Header.CE_SOURCE, ""),
        subject=headers.get(Header.CE_SUBJECT, ""),
        time=headers.get(Header.CE_TIME, ""),
        payload=payload,
        traceparent=headers.get(Header.TRACEPARENT),
    )
