"""Publishing write commands to the write log (MEMOS_WRITES): the one way memories change.

A put carries a memory's content, so it is sealed with its subject key (sealing.py): the key of
the memory's cube and of the principal that wrote it. Deletes and erasures carry none.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import Header, writes_subject

from .bus import publish, wait_applied
from .sealing import SubjectKeys, subject_key_id
from .telemetry import inject_headers


async def publish_write(
    js: JetStreamContext,
    cube_id: str,
    command: commands_pb2.WriteCommand,
    *,
    msg_id: str,
    keys: SubjectKeys | None = None,
) -> tuple[int, bool]:
    """Append one command, deduplicated by ``msg_id``; returns (log sequence, was_duplicate).
    A put needs ``keys`` to be sealed with."""
    data, headers = command.SerializeToString(), inject_headers({})
    if command.HasField("put"):
        if keys is None:
            raise ValueError("a put carries content: it must be sealed with its subject key")
        memory = command.put.memory
        key_id = subject_key_id(memory.cube_id, memory.provenance.principal)
        data = await keys.seal(key_id, data)
        headers[Header.SUBJECT_KEY] = key_id
    return await publish(js, writes_subject(cube_id), data, msg_id=msg_id, headers=headers)


async def write_version(
    js: JetStreamContext,
    keys: SubjectKeys,
    put: commands_pb2.PutMemory,
    *,
    request_id: str,
    wait_applied_seconds: float,
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
        keys=keys,
    )
    await wait_applied(js, seq, timeout_seconds=wait_applied_seconds)
