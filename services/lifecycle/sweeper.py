"""Scheduled work: every interval, apply each cube's policy (TTL, decay, promotion, distillation)
to its live memories.

A sweep keeps no state of its own: what is due follows from the memories (creation time, usage)
and the policy, so a restarted lifecycle simply carries on, and two replicas sweeping at once
write the same moves (the second is skipped by the vault's version check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from services.common import states
from services.common.clients import paged
from services.common.errors import MemosError

from .distill import MAX_NAMES, Distiller
from .moves import Mover
from .policies import Policies
from .rules import distillation_due, distillation_request_id, due
from .settings import LifecycleSettings

log = logging.getLogger(__name__)

PAGE_SIZE = 500
S = memory_pb2.MemoryState


class Sweeper:
    def __init__(
        self,
        settings: LifecycleSettings,
        policies: Policies,
        vault: vault_pb2_grpc.VaultServiceStub,
        mover: Mover,
        distiller: Distiller,
    ) -> None:
        self._distiller = distiller
        self._settings = settings
        self._policies = policies
        self._vault = vault
        self._mover = mover
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed; next one in %.0fs", self._settings.sweep_interval_seconds)
            try:
                await asyncio.wait_for(self._stopping.wait(), self._settings.sweep_interval_seconds)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping.set()

    async def sweep(self) -> Counter[str]:
        """One pass over every cube with a policy; returns how many moves each rule made."""
        moved: Counter[str] = Counter()
        for cube_id in await self._policies.cubes():
            if self._stopping.is_set():
                break
            moved += await self.sweep_cube(cube_id)
        if moved:
            log.info("sweep moved %s", dict(moved))
        return moved

    async def sweep_cube(self, cube_id: str) -> Counter[str]:
        policy = await self._policies.get(cube_id)
        moved: Counter[str] = Counter()
        activated: list[str] = []
        now = time.time()
        async for memory in self._live(cube_id):
            decision = due(memory, policy, now)
            if decision is None:
                if memory.state == S.MEMORY_STATE_ACTIVATED:
                    activated.append(memory.name)
                continue
            change = memory_pb2.StateChange(
                to_state=decision.target, rule=decision.rule, score=decision.score, reason=decision.reason
            )
            try:
                await self._mover.move(memory, change)
            except MemosError as err:  # changed under us; the next sweep sees the new version
                log.info("%s not moved to %s: %s", memory.name, states.name(decision.target), err)
                continue
            moved[decision.rule] += 1
            if decision.target == S.MEMORY_STATE_ACTIVATED:
                activated.append(memory.name)
        if policy.distill_activated_count and await self._distil(cube_id, activated, policy):
            moved["distillation"] += 1
        return moved

    async def _distil(self, cube_id: str, activated: list[str], policy: lifecycle_pb2.Policy) -> bool:
        """Queue the distillation of the activated memories when the policy says it is due."""
        names = distillation_due(activated, await self._distiller.adapters(cube_id), policy)
        if not names:
            return False
        request_id = distillation_request_id(names)
        if await self._distiller.find(cube_id, request_id) is not None:
            return False  # queued by an earlier sweep (running, done, or failed: see the operation)
        await self._distiller.promote(cube_id, names[:MAX_NAMES], request_id=request_id, reason="policy")
        return True

    def _live(self, cube_id: str):
        return paged(
            self._vault.ListMemories,
            vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=PAGE_SIZE),
            "memories",
            peer="vault",
            call_seconds=self._settings.vault_timeout_seconds,
        )
