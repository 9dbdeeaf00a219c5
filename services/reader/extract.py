"""From turns and documents to memory items (one item per turn; richer extraction comes later)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens
from memos_sdk.wire import memory_name
from services.common.clock import to_timestamp

from .timeparse import human_date


@dataclass(frozen=True, slots=True)
class Turn:
    """A validated message with its absolute time resolved."""

    id: str
    speaker: str
    text: str
    session_id: str
    time: dt.datetime | None
    image_caption: str = ""


def memory_id(*parts: str) -> str:
    """Deterministic: the same source in the same cube always names the same memory."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _new_memory(
    cube_id: str, mid: str, text: str, kind_type: int, now: timestamp_pb2.Timestamp
) -> memory_pb2.Memory:
    return memory_pb2.Memory(
        name=memory_name(cube_id, mid),
        cube_id=cube_id,
        memory_id=mid,
        kind=memory_pb2.MEMORY_KIND_PLAINTEXT,
        type=kind_type,
        state=memory_pb2.MEMORY_STATE_GENERATED,
        text=text,
        version=1,
        create_time=now,
        update_time=now,
    )


def turn_item_text(turn: Turn) -> str:
    """What the model will read: date, speaker and words of the turn."""
    text = f"{turn.speaker}: {turn.text}" if turn.speaker else turn.text
    if turn.image_caption:
        text += f" [shared an image: {turn.image_caption}]"
    return f"[{human_date(turn.time)}] {text}" if turn.time else text


def turn_items(
    cube_id: str, turns: Sequence[Turn], *, request_id: str, principal: str, now: timestamp_pb2.Timestamp
) -> list[memory_pb2.Memory]:
    items = []
    for turn in turns:
        memory = _new_memory(
            cube_id, memory_id("turn", turn.id), turn_item_text(turn), memory_pb2.MEMORY_TYPE_TURN, now
        )
        memory.speaker = turn.speaker
        source = memory_pb2.SourceRef(turn_id=turn.id, session_id=turn.session_id, speaker=turn.speaker)
        if turn.time is not None:
            ts = to_timestamp(turn.time)
            memory.event_time.CopyFrom(ts)
            source.time.CopyFrom(ts)
        memory.provenance.sources.append(source)
        memory.provenance.request_id = request_id
        memory.provenance.principal = principal
        memory.provenance.producer = "reader/turn"
        items.append(memory)
    return items


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, target_tokens: int) -> list[str]:
    """Split on paragraphs, then sentences, packing pieces up to about ``target_tokens``."""
    pieces: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count_tokens(paragraph) <= target_tokens:
            pieces.append(paragraph)
        else:
            pieces += [s.strip() for s in _SENTENCE.split(paragraph) if s.strip()]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        tokens = count_tokens(piece)
        if current and size + tokens > target_tokens:
            chunks.append(" ".join(current))
            current, size = [], 0
        current.append(piece)
        size += tokens
    if current:
        chunks.append(" ".join(current))
    return chunks


def document_items(
    cube_id: str,
    *,
    document_id: str,
    title: str,
    text: str,
    time: dt.datetime | None,
    tags: Sequence[str],
    target_tokens: int,
    request_id: str,
    principal: str,
    now: timestamp_pb2.Timestamp,
) -> list[memory_pb2.Memory]:
    items = []
    for i, chunk in enumerate(chunk_text(text, target_tokens)):
        body = f"{title}: {chunk}" if title else chunk
        memory = _new_memory(
            cube_id, memory_id("document", document_id, str(i)), body, memory_pb2.MEMORY_TYPE_DOCUMENT, now
        )
        memory.tags.extend(tags)
        if time is not None:
            memory.event_time.CopyFrom(to_timestamp(time))
        memory.provenance.sources.append(
            memory_pb2.SourceRef(document_id=document_id, turn_id=f"{document_id}#{i}")
        )
        memory.provenance.request_id = request_id
        memory.provenance.principal = principal
        memory.provenance.producer = "reader/document"
        items.append(memory)
    return items
