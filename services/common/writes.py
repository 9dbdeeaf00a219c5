"""Publishing write commands to the write log (MEMOS_WRITES): the one way memories change."""

from __future__ import annotations

from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import writes_subject

from .bus import publish
from .telemetry import inject_headers


async def publish_write(
    js: JetStreamContext, cube_id: str, command: commands_pb2.WriteCommand, *, msg_id: str
) -> tuple[int, bool]:
    """Append one command, deduplicated by ``msg_id``; returns (log sequence, was_duplicate)."""
    return await publish(
        js, writes_subject(cube_id), command.SerializeToString(), msg_id=msg_id, headers=inject_headers({})
    )
