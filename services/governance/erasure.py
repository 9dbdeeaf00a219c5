"""Erasing a subject (a cube, or a principal) and everything derived from its data.

Order matters: first find what the subject's data reached (memories, the adapters trained on
them), then destroy the subject keys (crypto-shredding: from here on the write log and the index
hold only unreadable bytes), then have the vault drop the index points, delete the KV caches and
adapters built from the data, queue rebuilds of adapters that other data still feeds, and tell
subscribers (``cube.erased``). Running it again finds nothing more to do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from memos.events.v1 import events_pb2
from memos.governance.v1 import governance_pb2
from memos.lifecycle.v1 import lifecycle_pb2, lifecycle_pb2_grpc
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from memos_sdk.wire import Bucket, EventKind
from services.common import states, validation
from services.common.blobs import BlobStore
from services.common.buckets import open_bucket
from services.common.bus import wait_applied
from services.common.clients import EVERY_MEMORY, forward_errors, paged
from services.common.errors import InvalidArgument
from services.common.events import publish_event
from services.common.sealing import SubjectKeys, subject_key_id
from services.common.writes import publish_write

from .principals import principal_id

log = logging.getLogger(__name__)

_CUBE = re.compile(r"^cubes/(?P<cube>[^/]+)$")


@dataclass
class _CubePlan:
    cube_id: str
    key_ids: list[str]
    erased: set[str] = field(default_factory=set)  # memory names
    adapters: list[memory_pb2.Memory] = field(default_factory=list)  # to withdraw
    rebuilds: list[list[str]] = field(default_factory=list)  # sources of adapters to train again


class Eraser:
    def __init__(
        self,
        js: JetStreamContext,
        keys: SubjectKeys,
        vault: vault_pb2_grpc.VaultServiceStub,
        lifecycle: lifecycle_pb2_grpc.LifecycleServiceStub,
        blobs: BlobStore,
        *,
        call_seconds: float,
        wait_applied_seconds: float,
    ) -> None:
        self._js = js
        self._keys = keys
        self._vault = vault
        self._lifecycle = lifecycle
        self._blobs = blobs
        self._call_seconds = call_seconds
        self._wait_applied_seconds = wait_applied_seconds

    async def erase(self, subject: str) -> governance_pb2.EraseSubjectResponse:
        whole_cube, pattern = _pattern(subject)
        plans = await self._plan(pattern, whole_cube, subject)
        report = governance_pb2.EraseSubjectResponse(subject=subject)
        for plan in plans:
            report.keys_destroyed += len(await self._keys.destroy_ids(plan.key_ids))
        for plan in plans:
            await self._drop_index_points(plan, whole_cube, subject)
            report.kv_caches_deleted += await self._drop_kv_caches(plan.cube_id)
            for adapter in plan.adapters:
                await asyncio.to_thread(self._blobs.delete, adapter.adapter.blob_key)
            await self._drop_checkpoints(plan.cube_id)
            if whole_cube:
                await self._forget_cube(plan.cube_id)
            else:
                for sources in plan.rebuilds:
                    report.rebuild_operations.append(await self._rebuild(plan.cube_id, sources))
            report.cubes.append(plan.cube_id)
            report.memories_erased += len(plan.erased) - len(plan.adapters)
            report.adapters_withdrawn += len(plan.adapters)
            await publish_event(
                self._js,
                cube_id=plan.cube_id,
                kind=EventKind.CUBE_ERASED,
                subject=f"cubes/{plan.cube_id}",
                event_id=f"{plan.cube_id}.erased.{uuid.uuid4().hex}",
                payload=events_pb2.CubeErased(
                    cube_id=plan.cube_id, subject=subject, memories_erased=len(plan.erased)
                ),
                source="memos/governance",
            )
        log.info(
            "erased %s: %d memories, %d keys, %d KV caches, %d adapters in %d cubes",
            subject,
            report.memories_erased,
            report.keys_destroyed,
            report.kv_caches_deleted,
            report.adapters_withdrawn,
            len(report.cubes),
        )
        return report

    async def _plan(self, pattern: str, whole_cube: bool, subject: str) -> list[_CubePlan]:
        by_cube: dict[str, list[str]] = {}
        for key_id in await self._keys.matching(pattern):
            by_cube.setdefault(key_id.split(".", 1)[0], []).append(key_id)
        if whole_cube:
            by_cube.setdefault(pattern.split(".", 1)[0], [])
        plans = []
        for cube_id, key_ids in sorted(by_cube.items()):
            plan = _CubePlan(cube_id, key_ids)
            memories = [m async for m in self._all_memories(cube_id)]
            for memory in memories:
                if whole_cube or subject_key_id(cube_id, memory.provenance.principal) in key_ids:
                    plan.erased.add(memory.name)
            for adapter in (m for m in memories if m.kind == memory_pb2.MEMORY_KIND_PARAMETRIC):
                parents = set(adapter.lineage.parent_names)
                if whole_cube or parents & plan.erased:
                    plan.adapters.append(adapter)
                    plan.erased.add(adapter.name)
                    remaining = sorted(
                        m.name for m in memories if m.name in parents - plan.erased and m.state in states.LIVE
                    )
                    if remaining and adapter.state in states.LIVE:
                        plan.rebuilds.append(remaining)
            plans.append(plan)
        return plans

    async def _all_memories(self, cube_id: str):
        request = vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=1000, filter=EVERY_MEMORY)
        async for memory in paged(
            self._vault.ListMemories, request, "memories", peer="vault", call_seconds=self._call_seconds
        ):
            yield memory

    async def _drop_index_points(self, plan: _CubePlan, whole_cube: bool, subject: str) -> None:
        erase = commands_pb2.EraseCommand(
            cube_id=plan.cube_id,
            whole_cube=whole_cube,
            key_ids=plan.key_ids,
            names=sorted(plan.erased),
            subject=subject,
        )
        seq, _ = await publish_write(
            self._js,
            plan.cube_id,
            commands_pb2.WriteCommand(erase=erase),
            msg_id=f"erase/{plan.cube_id}/{uuid.uuid4().hex}",
        )
        await wait_applied(self._js, seq, timeout_seconds=self._wait_applied_seconds)

    async def _drop_kv_caches(self, cube_id: str) -> int:
        await (await open_bucket(self._js, Bucket.ACTIVATION)).purge(cube_id)

        def delete() -> int:
            # kv/{model}/{cube}/{hash}.safetensors
            gone = [b.key for b in self._blobs.list("kv/") if b.key.split("/")[2:3] == [cube_id]]
            for key in gone:
                self._blobs.delete(key)
            return len(gone)

        return await asyncio.to_thread(delete)

    async def _drop_checkpoints(self, cube_id: str) -> None:
        """Training states of the cube's unfinished distillations (they learned from its data)."""

        def delete() -> None:
            for blob in self._blobs.list(f"checkpoints/{cube_id}/"):
                self._blobs.delete(blob.key)

        await asyncio.to_thread(delete)

    async def _forget_cube(self, cube_id: str) -> None:
        for bucket in (Bucket.ACL, Bucket.POLICIES):
            await (await open_bucket(self._js, bucket)).purge(cube_id)

    async def _rebuild(self, cube_id: str, sources: list[str]) -> str:
        request = lifecycle_pb2.PromoteRequest(
            cube_id=cube_id,
            target_kind=memory_pb2.MEMORY_KIND_PARAMETRIC,
            names=sources,
            request_id=f"erasure-rebuild-{uuid.uuid4().hex}",
        )
        async with forward_errors("lifecycle"):
            reply = await self._lifecycle.Promote(request, timeout=self._call_seconds)
        return reply.operation


def _pattern(subject: str) -> tuple[bool, str]:
    """(whole cube?, the subject-key pattern) of ``cubes/{cube}`` or ``principals/{id}``."""
    match = _CUBE.match(subject)
    if match:
        return True, f"{validation.cube_id(match['cube'], 'subject_id')}.*"
    if subject.startswith("principals/"):
        return False, f"*.{principal_id(subject, 'subject_id')}"
    raise InvalidArgument(
        "subject_id must be cubes/{cube} or principals/{id}", reason="MALFORMED_SUBJECT", field="subject_id"
    )
