"""Writing life-cycle changes: each is a new header-only version on the write log.

A move reads the current version from the vault, checks the state machine, and appends a put
that keeps the stored vectors (``keep_vectors``) with the new state and the reason for it. The
vault applies it like any other version: the old header stays readable in ListVersions.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from nats.js import JetStreamContext

from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from services.common import states
from services.common.clients import forward_errors
from services.common.clock import now_timestamp
from services.common.errors import Aborted, FailedPrecondition, NotFound
from services.common.sealing import SubjectKeys
from services.common.writes import write_version

from .settings import LifecycleSettings

PRODUCER = "lifecycle"


class Mover:
    def __init__(
        self,
        settings: LifecycleSettings,
        js: JetStreamContext,
        vault: vault_pb2_grpc.VaultServiceStub,
        keys: SubjectKeys,
    ):
        self._settings = settings
        self._js = js
        self._vault = vault
        self._keys = keys

    async def withdraw(
        self,
        derived: memory_pb2.Memory,
        source: str,
        reason: str,
        *,
        edit: Callable[[memory_pb2.Memory], None] | None = None,
    ) -> bool:
        """Archive ``derived`` because ``source``, a memory it was made from, changed (rule
        ``source_changed``); False when it is gone. Retried, it is the same write."""
        change = memory_pb2.StateChange(
            to_state=memory_pb2.MEMORY_STATE_ARCHIVED,
            rule="source_changed",
            reason=reason,
            related_name=source,
        )
        try:
            await self.move(derived, change, request_id=f"stale/{derived.version}", edit=edit)
        except NotFound:
            return False
        return True

    async def get(self, name: str) -> memory_pb2.Memory:
        async with forward_errors("vault"):
            return await self._vault.GetMemory(
                vault_pb2.GetMemoryRequest(name=name), timeout=self._settings.vault_timeout_seconds
            )

    async def move(
        self,
        current: memory_pb2.Memory,
        change: memory_pb2.StateChange,
        *,
        request_id: str = "",
        edit: Callable[[memory_pb2.Memory], None] | None = None,
    ) -> memory_pb2.Memory:
        """Move ``current`` to ``change.to_state`` (FAILED_PRECONDITION when the move is illegal)."""
        if not states.is_legal(current.state, change.to_state):
            raise FailedPrecondition(
                f"{current.name} is {states.name(current.state)}; it cannot move to {states.name(change.to_state)}",
                reason="ILLEGAL_TRANSITION",
                state=states.name(current.state),
                target_state=states.name(change.to_state),
            )
        stamped = memory_pb2.StateChange()
        stamped.CopyFrom(change)
        stamped.from_state = current.state
        stamped.time.CopyFrom(now_timestamp())

        def apply(memory: memory_pb2.Memory) -> None:
            memory.state = change.to_state
            memory.state_change.CopyFrom(stamped)
            if edit is not None:
                edit(memory)

        return await self.write(current, apply, request_id=request_id)

    async def write(
        self,
        current: memory_pb2.Memory,
        edit: Callable[[memory_pb2.Memory], None],
        *,
        request_id: str = "",
    ) -> memory_pb2.Memory:
        """Append the next version of ``current``'s header, changed by ``edit``; wait until applied."""
        request_id = request_id or uuid.uuid4().hex
        updated = memory_pb2.Memory()
        updated.CopyFrom(current)
        updated.ClearField("state_change")
        edit(updated)
        updated.version = current.version + 1
        updated.update_time.CopyFrom(now_timestamp())
        updated.provenance.request_id = request_id
        await write_version(
            self._js,
            self._keys,
            commands_pb2.PutMemory(memory=updated, keep_vectors=True),
            request_id=request_id,
            wait_applied_seconds=self._settings.wait_applied_timeout_seconds,
        )
        stored = await self.get(updated.name)
        if stored.version < updated.version or (
            stored.version == updated.version and stored.provenance.request_id != request_id
        ):
            raise Aborted(f"a concurrent change of {updated.name} won; re-read and retry", reason="CONFLICT")
        return stored
