"""Publishing memory-change events: CloudEvents binary-mode headers, protobuf payload, trace context."""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import Message
from nats.js import JetStreamContext

from memos.type.v1 import memory_pb2
from memos_sdk.wire import PROTOBUF_CONTENT_TYPE, EventKind, Header, events_subject

from .bus import publish
from .telemetry import inject_headers


def without_content(memory: memory_pb2.Memory) -> memory_pb2.Memory:
    """The memory as events carry it: every header field, no text or context."""
    bare = memory_pb2.Memory()
    bare.CopyFrom(memory)
    bare.ClearField("text")
    bare.ClearField("index_context")
    return bare


async def publish_event(
    js: JetStreamContext,
    *,
    cube_id: str,
    kind: EventKind,
    subject: str,
    event_id: str,
    payload: Message,
    source: str,
) -> None:
    """Publish one event; ``event_id`` is deterministic so a re-published event is deduplicated."""
    headers = inject_headers(
        {
            Header.CE_SPECVERSION: "1.0",
            Header.CE_ID: event_id,
            Header.CE_TYPE: kind.ce_type,
            Header.CE_SOURCE: source,
            Header.CE_SUBJECT: subject,
            Header.CE_TIME: dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            Header.CONTENT_TYPE: PROTOBUF_CONTENT_TYPE,
        }
    )
    await publish(
        js, events_subject(cube_id, kind), payload.SerializeToString(), msg_id=event_id, headers=headers
    )
