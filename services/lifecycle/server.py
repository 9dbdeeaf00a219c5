"""LifecycleService: state transitions, rollback, policies; the sweeper and the conflict resolver
run beside the RPCs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import AsyncExitStack

import grpc

from memos.lifecycle.v1 import lifecycle_pb2, lifecycle_pb2_grpc
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from services.common import states, validation
from services.common.access import (
    cube_id_at,
    field_at,
    memory_cube_at,
    operation_cube_at,
    owns,
    reads,
    writes,
)
from services.common.bus import open_jetstream
from services.common.clients import forward_errors, open_channel, paged
from services.common.errors import Aborted, InvalidArgument, NotFound
from services.common.grpc_host import Component, Registration
from services.common.operations import Operations
from services.common.sealing import SubjectKeys

from .conflicts import ConflictResolver
from .distill import Distiller, StaleAdapters, check_target
from .moves import Mover
from .policies import Policies, cube_of
from .settings import LifecycleSettings
from .sweeper import Sweeper

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 1024
# Moves that name the memory they were merged into or superseded by.
RELATED = {memory_pb2.MEMORY_STATE_MERGED: "merged_into", memory_pb2.MEMORY_STATE_SUPERSEDED: "superseded_by"}
ROLLBACK_PATHS = ["text", "tags", "labels", "event_time", "speaker"]


class LifecycleServicer(lifecycle_pb2_grpc.LifecycleServiceServicer):
    def __init__(
        self,
        settings: LifecycleSettings,
        policies: Policies,
        vault: vault_pb2_grpc.VaultServiceStub,
        mover: Mover,
        distiller: Distiller,
    ) -> None:
        self._settings = settings
        self._policies = policies
        self._vault = vault
        self._mover = mover
        self._distiller = distiller

    async def GetPolicy(self, request, context):
        return await self._policies.get(cube_of(request.name))

    async def SetPolicy(self, request, context):
        policy = await self._policies.set(request.policy)
        log.info("policy of %s set", policy.name)
        return policy

    async def Transition(self, request, context):
        cube_id, _ = validation.memory_name(request.name)
        request_id = validation.request_id(request.request_id)
        target = request.target_state
        if target not in states.TRANSITIONS or target == memory_pb2.MEMORY_STATE_GENERATED:
            raise InvalidArgument(
                f"target_state must be one of {sorted(states.name(s) for s in states.TRANSITIONS if s != 1)}",
                reason="INVALID_STATE",
                field="target_state",
            )
        if len(request.reason) > MAX_REASON_CHARS:
            raise InvalidArgument(
                f"reason is longer than {MAX_REASON_CHARS} characters", reason="REASON_TOO_LONG"
            )
        link = RELATED.get(target)
        if link and not request.related_name:
            raise InvalidArgument(
                f"a move to {states.name(target)} names the memory it went to in related_name",
                reason="MISSING_FIELD",
                field="related_name",
            )
        if request.related_name:
            related_cube, _ = validation.memory_name(request.related_name, "related_name")
            if related_cube != cube_id or request.related_name == request.name:
                raise InvalidArgument(
                    "related_name must be another memory of the same cube", reason="NAME_OUTSIDE_CUBE"
                )
            await self._mover.get(request.related_name)
        current = await self._mover.get(request.name)
        if request.expected_version and request.expected_version != current.version:
            raise Aborted(
                f"{current.name} is at version {current.version}, not {request.expected_version}",
                reason="VERSION_MISMATCH",
                current_version=current.version,
            )
        if request_id and current.provenance.request_id == request_id and current.state == target:
            return current  # a retry of a move that was made
        rule = (
            "restore"
            if current.state not in states.LIVE and target == memory_pb2.MEMORY_STATE_ACTIVATED
            else "manual"
        )
        change = memory_pb2.StateChange(
            to_state=target, rule=rule, reason=request.reason, related_name=request.related_name
        )

        def edit(memory: memory_pb2.Memory) -> None:
            if link:
                setattr(memory.lineage, link, request.related_name)
            if target in states.LIVE:  # restored: it is the current one again
                memory.lineage.superseded_by = ""
                memory.lineage.merged_into = ""
                memory.ClearField("valid_to")

        return await self._mover.move(current, change, request_id=request_id or uuid.uuid4().hex, edit=edit)

    async def Rollback(self, request, context):
        validation.memory_name(request.name)
        request_id = validation.request_id(request.request_id) or uuid.uuid4().hex
        if request.version < 1:
            raise InvalidArgument("version must be 1 or more", reason="INVALID_VERSION", field="version")
        current = await self._mover.get(request.name)
        if current.provenance.request_id == request_id:
            return current  # a retry of a rollback that was made
        if request.version >= current.version:
            raise InvalidArgument(
                f"{current.name} is at version {current.version}; roll back to an earlier one",
                reason="INVALID_VERSION",
                field="version",
            )
        target = await self._version(request.name, request.version)
        async with forward_errors("vault"):
            return await self._vault.UpdateMemory(
                vault_pb2.UpdateMemoryRequest(
                    memory=target,
                    update_mask={"paths": ROLLBACK_PATHS},
                    expected_version=current.version,
                    request_id=request_id,
                ),
                timeout=self._settings.vault_timeout_seconds,
            )

    async def _version(self, name: str, version: int) -> memory_pb2.Memory:
        versions = paged(
            self._vault.ListVersions,
            vault_pb2.ListVersionsRequest(name=name, page_size=100),
            "versions",
            peer="vault",
            call_seconds=self._settings.vault_timeout_seconds,
        )
        async for memory in versions:
            if memory.version == version:
                return memory
        raise NotFound(f"{name} has no version {version}", reason="VERSION_NOT_FOUND", version=version)

    async def Promote(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        check_target(request.target_kind)
        operation = await self._distiller.promote(
            cube_id,
            list(request.names),
            request_id=validation.request_id(request.request_id),
            reason="promote",
        )
        return lifecycle_pb2.PromoteResponse(operation=operation.name, source_count=operation.source_count)

    async def GetOperation(self, request, context):
        return await self._distiller.operations.get(request.name)


ACCESS = {
    "GetPolicy": reads(lambda r: cube_of(r.name)),
    # Policy decides how long the cube's memories live: the owner's call. Setting one on a cube
    # nobody owns yet makes the caller its owner.
    "SetPolicy": owns(lambda r: cube_of(r.policy.name), claims=True),
    "Transition": writes(memory_cube_at(), field_at("name")),
    "Rollback": writes(memory_cube_at(), field_at("name")),
    "Promote": writes(cube_id_at()),
    "GetOperation": reads(operation_cube_at(), field_at("name")),
}


async def setup(stack: AsyncExitStack, settings: LifecycleSettings) -> Component:
    channel: grpc.aio.Channel = await stack.enter_async_context(open_channel(settings.vault_addr, settings))
    vault = vault_pb2_grpc.VaultServiceStub(channel)
    js = await open_jetstream(stack, settings.nats_url, "lifecycle")
    policies = await Policies.open(stack, js, default_resolve_conflicts=settings.default_resolve_conflicts)
    keys = await SubjectKeys.start(stack, js)
    mover = Mover(settings, js, vault, keys)
    distiller = Distiller(settings, js, vault, await Operations.open(js))
    sweeper = Sweeper(settings, policies, vault, mover, distiller)
    conflicts = await ConflictResolver(settings, js, policies, vault, mover).worker()
    stale = await StaleAdapters(js, distiller, mover, vault, settings.vault_timeout_seconds).worker()

    async def stop() -> None:
        await asyncio.gather(sweeper.stop(), conflicts.stop(), stale.stop())

    servicer = LifecycleServicer(settings, policies, vault, mover, distiller)
    add = lifecycle_pb2_grpc.add_LifecycleServiceServicer_to_server
    return Component(
        registrations=[Registration.of(lifecycle_pb2.DESCRIPTOR, "LifecycleService", add, servicer, ACCESS)],
        background=[sweeper.run, conflicts.run, stale.run],
        on_stop=stop,
    )
