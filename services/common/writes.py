"""Publishing write commands to the write log (MEMOS_WRITES): the one way memories change."""

from __future__ import annotations

from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import writes_subject

from .bus import publish, wait_applied
from .telemetry import inject_headers


async def publish_write(
    js: JetStreamContext, cube_id: str, command: commands_pb2.WriteCommand, *, msg_id: str
) -> tuple[int, bool]:
    """Append one command, deduplicated by ``msg_id``; returns (log sequence, was_duplicate)."""
    return await publish(
        js, writes_subject(cube_id), command.SerializeToString(), msg_id=msg_id, headers=inject_headers({})
    )


async def write_version(
    js: JetStreamContext, put: commands_pb2.PutMemory, *, request_id: str, wait_applied_seconds: float
) -> None:
    """Append the put of a memory's next version and wait until the vault has applied it.

    The message id names the version and the request, so a retry of the same request is one write.
    Whether this put won (and not a concurrent one of the same version) is for the caller to read.
    """
    memory = put.memory
    seq, _ = await publish_write(
        js,
        memory.cube_id,
        commands_pb2.WriteCommand(put=put),
        msg_id=f"{memory.name}/v{memory.version}/{request_id}",
    )
    await wait_applied(js, seq, timeout_seconds=wait_applied_seconds)
