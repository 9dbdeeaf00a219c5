"""Activation memory of each cube: what goes into its KV prefix, building it, and keeping it fresh.

A cube's activation is one record in the MEMOS_ACTIVATION key-value bucket (so every replica sees
it): the KV cache's reference and the exact memory versions rendered into its prefix. A record is
fresh while every one of those memories still has that version; Chat checks this on every turn,
so a stale cache is never used silently, even if an event was missed. Events only make rebuilds
come sooner: any ``memory.*`` event of a cube schedules a debounced rebuild.

Selection: the cube's core memories (ACTIVATED ones first, then the most used, then the most
recent) within a token budget, after the memories a next-scene hint (the conversation so far)
retrieves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from memos.events.v1 import events_pb2
from memos.type.v1 import activation_pb2, memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from memos_sdk.wire import EventKind, Stream, events_subject
from services.common.bus import PullWorker, durable_worker
from services.common.clients import forward_errors
from services.common.clock import now_timestamp
from services.common.events import publish_event
from services.common.generation import Generator
from services.common.injection import is_flagged
from services.common.memory_text import tokens_of
from services.common.prompt import prefix_order, render_prefix

from .retrieval import Retriever
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

# One durable consumer shared by the scheduler replicas: each memory change reaches one of them.
WATCH_CONSUMER = "scheduler-activation"


def select(
    core: Sequence[memory_pb2.Memory], predicted: Sequence[memory_pb2.Memory], budget_tokens: int
) -> tuple[list[memory_pb2.Memory], dict[str, str]]:
    """Predicted memories first, then core ones by usage and recency, while they fit the budget.

    Returns the chosen memories in prefix order and why each was chosen (name -> reason).
    """
    ranked_core = sorted(
        core,
        key=lambda m: (
            m.state == memory_pb2.MEMORY_STATE_ACTIVATED,  # promoted by the lifecycle's rule
            m.usage.access_count,
            m.update_time.seconds,
            m.create_time.seconds,
            m.name,
        ),
        reverse=True,
    )
    chosen: dict[str, memory_pb2.Memory] = {}
    why: dict[str, str] = {}
    used = 0
    for reason, memories in (("predicted", predicted), ("core", ranked_core)):
        for memory in memories:
            if memory.name in chosen or memory.kind not in (
                memory_pb2.MEMORY_KIND_UNSPECIFIED,
                memory_pb2.MEMORY_KIND_PLAINTEXT,
            ):
                continue
            tokens = tokens_of(memory)
            if used + tokens > budget_tokens:
                continue
            chosen[memory.name], why[memory.name] = memory, reason
            used += tokens
    return prefix_order(chosen.values()), why


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it (cubes come and go)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Activations:
    def __init__(
        self,
        settings: SchedulerSettings,
        *,
        js: JetStreamContext,
        bucket: KeyValue,
        vault: vault_pb2_grpc.VaultServiceStub,
        generator: Generator,
        retriever: Retriever,
    ) -> None:
        self._settings = settings
        self._js = js
        self._bucket = bucket
        self._vault = vault
        self._generator = generator
        self._retriever = retriever
        self._locks = KeyedLocks()
        self._workers: dict[str, asyncio.Task] = {}
        self._due: dict[str, float] = {}
        self._hints: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------------

    async def current(self, cube_id: str) -> activation_pb2.Activation | None:
        try:
            entry = await self._bucket.get(cube_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return activation_pb2.Activation.FromString(entry.value)

    async def memories_now(self, record: activation_pb2.Activation) -> tuple[bool, list[memory_pb2.Memory]]:
        """(fresh, the record's memories at their current versions, in prefix order)."""
        names = [m.name for m in record.memories]
        async with forward_errors("vault"):
            found = await self._vault.BatchGetMemories(
                vault_pb2.BatchGetMemoriesRequest(cube_id=record.cube_id, names=names, allow_missing=True),
                timeout=self._settings.vault_timeout_seconds,
            )
        now = {m.name: m for m in found.memories}
        fresh = all(now.get(m.name) is not None and now[m.name].version == m.version for m in record.memories)
        return fresh, [now[name] for name in names if name in now]

    # -- building --------------------------------------------------------------------------------

    async def build(self, cube_id: str, hint: str = "") -> tuple[activation_pb2.Activation | None, bool]:
        """Select, render and build the cube's activation; (record, whether a new cache was made)."""
        async with self._locks.hold(cube_id):
            core = await self._core_candidates(cube_id)
            predicted = []
            if hint.strip():
                found = await self._retriever.search(
                    cube_id,
                    hint[-4096:],
                    top_k=self._settings.activation_predicted,
                    token_budget=0,
                    record_usage=False,
                )
                predicted = [m for a in found for m in a.span]
            # A memory that reads like an instruction never becomes part of the model's context
            # for every turn; it can still be retrieved, as a quoted and marked line.
            core = [m for m in core if not is_flagged(m.labels)]
            predicted = [m for m in predicted if not is_flagged(m.labels)]
            chosen, why = select(core, predicted, self._settings.activation_budget_tokens)
            previous = await self.current(cube_id)
            if not chosen:
                return None, False
            built = await self._generator.build_kv(
                cube_id,
                render_prefix(chosen),
                [f"{m.name}@{m.version}" for m in chosen],
                replaces=previous.kv_ref if previous else "",
            )
            record = activation_pb2.Activation(
                cube_id=cube_id,
                kv_ref=built.kv_ref,
                memories=[activation_pb2.MemoryVersion(name=m.name, version=m.version) for m in chosen],
                prefix_tokens=built.prefix_tokens,
                blob_bytes=built.blob_bytes,
                build_time=now_timestamp(),
                selection=why,
            )
            await self._bucket.put(cube_id, record.SerializeToString())
            replaced = previous.kv_ref if previous and previous.kv_ref != built.kv_ref else ""
            await publish_event(
                self._js,
                cube_id=cube_id,
                kind=EventKind.KV_BUILT,
                subject=built.kv_ref,
                event_id=f"kv.built:{built.kv_ref}:{record.build_time.seconds}",
                payload=events_pb2.KvBuilt(
                    activation=record, created=built.created, replaced_kv_ref=replaced
                ),
                source="memos/scheduler",
            )
            log.info(
                "activation of %s: %d memories, %d tokens, %s (%s)",
                cube_id,
                len(chosen),
                built.prefix_tokens,
                built.kv_ref,
                "built" if built.created else "reused",
            )
            return record, built.created

    async def _core_candidates(self, cube_id: str) -> list[memory_pb2.Memory]:
        memories: list[memory_pb2.Memory] = []
        token = ""
        async with forward_errors("vault"):
            while len(memories) < self._settings.activation_scan_limit:
                page = await self._vault.ListMemories(
                    vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=1000, page_token=token),
                    timeout=self._settings.vault_timeout_seconds,
                )
                memories.extend(page.memories)
                token = page.next_page_token
                if not token:
                    break
        return memories

    # -- scheduling ------------------------------------------------------------------------------

    def schedule(self, cube_id: str, hint: str | None = None) -> None:
        """Rebuild the cube's activation once it has been quiet for the debounce period.

        One worker a cube: changes during a build make it wait for quiet again and rebuild once,
        so a bulk ingest costs one build at its end, not one per pause.
        """
        if hint is not None:
            self._hints[cube_id] = hint
        self._due[cube_id] = asyncio.get_running_loop().time() + self._settings.preload_debounce_seconds
        if cube_id not in self._workers:
            self._workers[cube_id] = asyncio.create_task(self._rebuild_when_quiet(cube_id))

    async def _rebuild_when_quiet(self, cube_id: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while cube_id in self._due:
                wait = self._due[cube_id] - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                del self._due[cube_id]
                try:
                    await self.build(cube_id, self._hints.pop(cube_id, ""))
                except Exception:  # a failed background build is retried on the next change
                    log.exception("background activation build for %s failed", cube_id)
        finally:
            self._workers.pop(cube_id, None)

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()

    async def watch_changes(self) -> PullWorker:
        """A worker that schedules a rebuild of a cube's activation after each change of its memories."""

        async def handle(msgs) -> None:
            for msg in msgs:
                self.schedule(msg.subject.split(".")[3])
                await msg.ack()

        return await durable_worker(
            self._js,
            Stream.EVENTS,
            durable=WATCH_CONSUMER,
            filter_subject=events_subject("*", "memory.>"),
            handle=handle,
            batch_size=64,
            name="memory changes",
            deliver_policy=DeliverPolicy.NEW,
        )
