"""Promotion to parametric memory: queueing distillation jobs, and withdrawing stale adapters.

``promote`` records an operation and puts a ``DistillJob`` on the MEMOS_JOBS work queue; the
trainer takes it from there. ``StaleAdapters`` watches memory events: when a memory an adapter
learned from is deleted, superseded, merged or expired, the adapter is archived at once (so chat
stops using it), marked stale, and a rebuild from its remaining live sources is queued. The same
events withdraw the digests that restate the memory (``digests``).
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from memos_sdk.wire import EventKind, Stream, events_subject, jobs_subject
from services.common import validation
from services.common.bus import PullWorker, durable_worker, publish
from services.common.clients import forward_errors, live_adapters, live_memories, paged
from services.common.errors import FailedPrecondition, InvalidArgument, MemosError
from services.common.operations import Operations, operation_id, operation_name
from services.common.telemetry import inject_headers

from .digests import withdraw_digests, withdraws_digests
from .moves import Mover
from .settings import LifecycleSettings

log = logging.getLogger(__name__)

CONSUMER = "lifecycle-stale-adapters"
MAX_NAMES = 500
# Events after which an adapter holds something it should no longer say.
WITHDRAWING = (
    EventKind.MEMORY_DELETED,
    EventKind.MEMORY_SUPERSEDED,
    EventKind.MEMORY_MERGED,
    EventKind.MEMORY_EXPIRED,
)
_WITHDRAWING_TYPES = frozenset(kind.ce_type for kind in WITHDRAWING)


class Distiller:
    def __init__(
        self,
        settings: LifecycleSettings,
        js: JetStreamContext,
        vault: vault_pb2_grpc.VaultServiceStub,
        operations: Operations,
    ) -> None:
        self._settings = settings
        self._js = js
        self._vault = vault
        self.operations = operations

    async def promote(
        self, cube_id: str, names: list[str], *, request_id: str, reason: str, replaces: str = ""
    ) -> lifecycle_pb2.Operation:
        """Queue the distillation of ``names`` (or of the cube's live plaintext memories)."""
        existing = await self.find(cube_id, request_id)
        if existing is not None:
            return existing  # a retry
        name = operation_name(cube_id, operation_id(cube_id, request_id))
        sources = await self._sources(cube_id, names)
        if not sources:
            raise FailedPrecondition(
                f"cube {cube_id} has no live plaintext memories to distil", reason="NOTHING_TO_DISTIL"
            )
        operation = lifecycle_pb2.Operation(
            name=name,
            cube_id=cube_id,
            kind="distill",
            state=lifecycle_pb2.OPERATION_STATE_QUEUED,
            message=f"queued ({reason})",
            source_count=len(sources),
        )
        await self.operations.put(operation)
        job = commands_pb2.DistillJob(
            operation=name, cube_id=cube_id, source_names=sources, replaces=replaces, reason=reason
        )
        await publish(
            self._js,
            jobs_subject("distill", cube_id),
            job.SerializeToString(),
            msg_id=name,
            headers=inject_headers({}),
        )
        log.info("queued %s: distil %d memories of %s (%s)", name, len(sources), cube_id, reason)
        return operation

    async def find(self, cube_id: str, request_id: str) -> lifecycle_pb2.Operation | None:
        """The operation of the promotion queued with ``request_id``, if there was one."""
        return await self.operations.find(operation_name(cube_id, operation_id(cube_id, request_id)))

    async def _sources(self, cube_id: str, names: list[str]) -> list[str]:
        if len(names) > MAX_NAMES:
            raise InvalidArgument(f"at most {MAX_NAMES} names", reason="TOO_MANY_NAMES", field="names")
        if not names:
            listing = paged(
                self._vault.ListMemories,
                vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=200),
                "memories",
                peer="vault",
                call_seconds=self._settings.vault_timeout_seconds,
            )
            # A digest restates statements that are sources themselves.
            found = [m.name async for m in listing if m.type != memory_pb2.MEMORY_TYPE_SUMMARY]
            return sorted(found)[: self._settings.distill_max_memories]
        for i, n in enumerate(names):
            owner, _ = validation.memory_name(n, f"names[{i}]")
            if owner != cube_id:
                raise InvalidArgument(
                    f"names[{i}] is not in cube {cube_id}", reason="CROSS_CUBE", field=f"names[{i}]"
                )
        async with forward_errors("vault"):
            got = await self._vault.BatchGetMemories(
                vault_pb2.BatchGetMemoriesRequest(cube_id=cube_id, names=sorted(set(names))),
                timeout=self._settings.vault_timeout_seconds,
            )
        for memory in got.memories:
            if memory.kind not in (memory_pb2.MEMORY_KIND_PLAINTEXT, memory_pb2.MEMORY_KIND_UNSPECIFIED):
                raise InvalidArgument(f"{memory.name} is not a plaintext memory", reason="NOT_PLAINTEXT")
        return [m.name for m in got.memories]

    async def live(self, cube_id: str, names: list[str]) -> list[str]:
        """Those of ``names`` that exist and are live."""
        live = await live_memories(
            self._vault, cube_id, names, call_seconds=self._settings.vault_timeout_seconds
        )
        return [m.name for m in live]

    async def adapters(self, cube_id: str, *, learned: str = "") -> list[memory_pb2.Memory]:
        """The cube's live adapters; with ``learned``, those distilled from that memory."""
        return await live_adapters(
            self._vault, cube_id, call_seconds=self._settings.vault_timeout_seconds, learned=learned
        )


class StaleAdapters:
    def __init__(
        self,
        js: JetStreamContext,
        distiller: Distiller,
        mover: Mover,
        vault: vault_pb2_grpc.VaultServiceStub,
        call_seconds: float,
    ) -> None:
        self._js = js
        self._distiller = distiller
        self._mover = mover
        self._vault = vault
        self._call_seconds = call_seconds

    async def worker(self) -> PullWorker:
        return await durable_worker(
            self._js,
            Stream.EVENTS,
            durable=CONSUMER,
            filter_subject=[events_subject("*", kind) for kind in WITHDRAWING],
            handle=self._handle,
            batch_size=32,
            name="stale-adapters",
            ack_wait_seconds=120.0,
            deliver_policy=DeliverPolicy.NEW,
            max_deliver=5,
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            kind = (msg.headers or {}).get("ce-type", "")
            name, what = (msg.headers or {}).get("ce-subject", ""), kind.rsplit(".", 1)[-1]
            try:
                if kind in _WITHDRAWING_TYPES:
                    await self.withdraw_learners(name, what)
                if name and withdraws_digests(kind):
                    await withdraw_digests(
                        self._vault, self._mover, name, what, call_seconds=self._call_seconds
                    )
            except MemosError as err:
                log.warning("stale-adapter or digest check failed, retrying later: %s", err)
                await msg.nak(delay=5)
                continue
            await msg.ack()

    async def withdraw_learners(self, name: str, what: str) -> None:
        """Archive every live adapter that learned ``name``, and queue its rebuild without it."""
        if not name:
            return
        cube_id, _ = validation.memory_name(name)
        for adapter in await self._distiller.adapters(cube_id, learned=name):

            def mark(m: memory_pb2.Memory) -> None:
                m.adapter.stale = True

            reason = f"{name} was {what}; withdrawn until it is rebuilt without it"
            if not await self._mover.withdraw(adapter, name, reason, edit=mark):
                continue
            remaining = [n for n in adapter.lineage.parent_names if n != name]
            live = await self._distiller.live(cube_id, remaining)
            log.info(
                "adapter %s withdrawn: %s was %s; %d sources remain", adapter.name, name, what, len(live)
            )
            if live:
                await self._distiller.promote(
                    cube_id,
                    live,
                    request_id=f"rebuild/{adapter.name}/v{adapter.version}",
                    reason="rebuild",
                    replaces=adapter.name,
                )


def check_target(kind: int) -> None:
    if kind == memory_pb2.MEMORY_KIND_PARAMETRIC:
        return
    if kind == memory_pb2.MEMORY_KIND_ACTIVATION:
        raise InvalidArgument(
            "activation is per memory: Transition it to ACTIVATED, or set a policy's promote_access_count",
            reason="UNSUPPORTED_TARGET",
            field="target_kind",
        )
    raise InvalidArgument("target_kind must be PARAMETRIC", reason="INVALID_KIND", field="target_kind")
