"""The trainer: takes distillation jobs off the MEMOS_JOBS work queue and turns memories into an adapter.

One job at a time: read the source memories, derive lessons, train a LoRA adapter (in a thread,
reporting progress into the operation), evaluate it, store it in the object store, register it
in the vault as a parametric memory whose lineage lists its sources, supersede the cube's older
adapters, and publish ``adapter.trained``.

A job is acked only when it is done. While it trains, the worker tells JetStream it is still at it;
when the trainer dies, the job is handed out again after ``job_ack_wait_seconds`` and starts over
(every write it makes is named by the operation, so a second run writes the same things).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack

import grpc
import torch
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from memos.events.v1 import events_pb2
from memos.lifecycle.v1 import lifecycle_pb2, lifecycle_pb2_grpc
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from memos_sdk.wire import EventKind, Stream, jobs_subject, memory_name
from services.common.blobs import open_blob_store
from services.common.bus import PullWorker, durable_worker, open_jetstream
from services.common.clients import forward_errors, live_adapters, live_memories, open_channel
from services.common.clock import now_timestamp
from services.common.embedder import Embedder, open_embedder
from services.common.errors import MemosError, NotFound
from services.common.events import publish_event
from services.common.grpc_host import Component
from services.common.operations import Operations, parse_name
from services.common.sealing import SubjectKeys
from services.common.writes import write_version
from services.inference.lessons import lessons
from services.inference.llm import load_language_model
from services.inference.lora import Adapters, TrainConfig, adapter_key, checkpoint_key, general_texts, recall

from .settings import TrainerSettings

log = logging.getLogger(__name__)

CONSUMER = "trainer"
Op = lifecycle_pb2.Operation


def describe(sources: list[memory_pb2.Memory]) -> str:
    """The adapter item's text (what a listing shows). It quotes none of the sources: the item is
    sealed with no one's subject key, and erasing a source's writer must leave none of its words."""
    speakers = sorted({m.speaker for m in sources if m.speaker})
    who = f" ({', '.join(speakers[:5])}{', ...' if len(speakers) > 5 else ''})" if speakers else ""
    return f"LoRA adapter learned from {len(sources)} memories{who}"


class Distillation:
    def __init__(
        self,
        settings: TrainerSettings,
        js: JetStreamContext,
        vault: vault_pb2_grpc.VaultServiceStub,
        lifecycle: lifecycle_pb2_grpc.LifecycleServiceStub,
        embedder: Embedder,
        operations: Operations,
        adapters: Adapters,
        keys: SubjectKeys,
    ) -> None:
        self._settings = settings
        self._js = js
        self._keys = keys
        self._vault = vault
        self._lifecycle = lifecycle
        self._embedder = embedder
        self._operations = operations
        self._adapters = adapters
        self._blobs = open_blob_store(settings)
        self._config = TrainConfig(
            rank=settings.rank,
            alpha=2 * settings.rank,
            top_layers=settings.top_layers,
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            replay_weight=settings.replay_weight,
            replay_pool=settings.replay_pool,
            max_ppl_increase=settings.max_ppl_increase,
        )
        self._ppl_before: float | None = None

    async def worker(self) -> PullWorker:
        return await durable_worker(
            self._js,
            Stream.JOBS,
            durable=CONSUMER,
            filter_subject=jobs_subject("distill", "*"),
            handle=self._handle,
            batch_size=1,
            name="distill",
            ack_wait_seconds=self._settings.job_ack_wait_seconds,
            max_deliver=self._settings.job_max_attempts,
            max_ack_pending=1,
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            heartbeat = asyncio.create_task(self._keep_alive(msg))
            try:
                job = commands_pb2.DistillJob.FromString(msg.data)
                await self.distil(job, attempt=msg.metadata.num_delivered)
            except Exception as err:  # a job that fails is recorded, not retried forever
                if not isinstance(err, MemosError):
                    log.exception("distillation job failed")
                await self._fail(msg, err)
                await msg.term()
            else:
                await msg.ack()
            finally:
                heartbeat.cancel()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._settings.job_ack_wait_seconds / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _fail(self, msg: Msg, err: Exception) -> None:
        with contextlib.suppress(Exception):
            job = commands_pb2.DistillJob.FromString(msg.data)
            operation = await self._operations.get(job.operation)
            operation.state = lifecycle_pb2.OPERATION_STATE_FAILED
            operation.message = f"failed: {err}"[:1000]
            await self._operations.put(operation)

    async def _report(self, operation: Op, message: str, progress: float) -> None:
        operation.message, operation.progress = message, progress
        await self._operations.put(operation)

    async def distil(self, job: commands_pb2.DistillJob, *, attempt: int = 1) -> Op:
        _, adapter_id = parse_name(job.operation)
        operation = await self._operations.get(job.operation)
        saved_at = checkpoint_key(job.cube_id, adapter_id)
        if operation.state == lifecycle_pb2.OPERATION_STATE_SUCCEEDED:
            await asyncio.to_thread(self._blobs.delete, saved_at)
            return operation  # done before a crash kept the ack from reaching the queue
        operation.state, operation.attempts = lifecycle_pb2.OPERATION_STATE_RUNNING, attempt
        await self._report(operation, "reading the source memories", 0.0)
        sources = await live_memories(
            self._vault, job.cube_id, list(job.source_names), call_seconds=self._settings.call_timeout_seconds
        )
        if not sources:
            raise MemosError("none of the source memories is live any more", reason="NOTHING_TO_DISTIL")
        taught = lessons((m.name, m.text, m.speaker) for m in sources)
        key = adapter_key(job.cube_id, adapter_id)
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(step: int, steps: int, loss: float) -> None:
            if time.monotonic() - last[0] > 2 or step == steps:
                last[0] = time.monotonic()
                message = f"training step {step}/{steps}, loss {loss:.3f}"
                asyncio.run_coroutine_threadsafe(self._report(operation, message, step / steps), loop)

        # A crashed attempt left the state of its last finished epoch: carry on from there.
        resume = await asyncio.to_thread(self._saved, saved_at)
        lesson_count = sum(not t.held_out for t in taught)
        await self._report(
            operation,
            f"training on {lesson_count} lessons" + (" (resuming from a checkpoint)" if resume else ""),
            0.0,
        )
        trained = await asyncio.to_thread(
            self._adapters.train,
            key,
            taught,
            self._config,
            progress,
            checkpoint=lambda state: self._blobs.put(saved_at, state),
            resume=resume,
        )
        await self._report(operation, "evaluating", 1.0)
        right, asked, ppl_before, ppl_after, scale = await asyncio.to_thread(self._evaluate, key, taught)
        blob = self._adapters.pack(key, self._config, {"cube": job.cube_id, "operation": job.operation})
        self._adapters.remove(key)
        await asyncio.to_thread(self._blobs.put, key, blob)
        adapter = memory_pb2.Adapter(
            blob_key=key,
            size_bytes=len(blob),
            base_model=self._adapters.lm.model_id,
            operation=job.operation,
            training_examples=sum(not t.held_out for t in taught),
            train_seconds=trained["train_seconds"],
            heldout_recall=right / asked if asked else 0.0,
            ppl_before=ppl_before,
            ppl_after=ppl_after,
            scale=scale,
        )
        memory = await self._register(job, adapter_id, sources, adapter)
        await asyncio.to_thread(self._blobs.delete, saved_at)
        replaced = await self._supersede_older(memory)
        await publish_event(
            self._js,
            cube_id=job.cube_id,
            kind=EventKind.ADAPTER_TRAINED,
            subject=memory.name,
            event_id=f"adapter.trained:{memory.name}",
            payload=events_pb2.AdapterTrained(adapter=memory, replaced=",".join(replaced)),
            source="memos/trainer",
        )
        operation.state, operation.result_name = lifecycle_pb2.OPERATION_STATE_SUCCEEDED, memory.name
        summary = (
            f"adapter {memory.name}: {len(sources)} memories, {adapter.training_examples} lessons, "
            f"{adapter.train_seconds:.0f}s, held-out recall {right}/{asked}, "
            f"general-text perplexity {ppl_before:.2f} -> {ppl_after:.2f} at scale {scale:.2f}"
        )
        await self._report(operation, summary, 1.0)
        log.info("%s done: %s", job.operation, summary)
        return operation

    def _saved(self, key: str) -> bytes | None:
        try:
            data = self._blobs.get(key)
        except NotFound:
            return None
        log.info("resuming training from checkpoint %s", key)
        return data

    def _evaluate(self, key: str, taught) -> tuple[int, int, float, float, float]:
        """Fit the adapter's scale to the perplexity budget, then ask the held-out phrasings."""
        texts = general_texts()
        if self._ppl_before is None:
            self._ppl_before = self._adapters.perplexity(texts, adapter=None)
        scale, ppl_after = self._adapters.fit_scale(
            key, texts, self._ppl_before, self._config.max_ppl_increase
        )
        held = [t for t in taught if t.held_out and t.expect][: self._settings.eval_questions]
        right, asked = recall(self._adapters, held, adapter=key) if held else (0, 0)
        return right, asked, self._ppl_before, ppl_after, scale

    async def _register(
        self, job: commands_pb2.DistillJob, adapter_id: str, sources: list[memory_pb2.Memory], adapter
    ) -> memory_pb2.Memory:
        now = now_timestamp()
        memory = memory_pb2.Memory(
            name=memory_name(job.cube_id, adapter_id),
            cube_id=job.cube_id,
            memory_id=adapter_id,
            kind=memory_pb2.MEMORY_KIND_PARAMETRIC,
            state=memory_pb2.MEMORY_STATE_GENERATED,
            text=describe(sources),
            version=1,
            create_time=now,
            update_time=now,
            adapter=adapter,
        )
        memory.lineage.parent_names.extend(m.name for m in sources)
        memory.provenance.request_id = job.operation
        memory.provenance.producer = "trainer"
        vector = (await self._embedder.embed([memory.text]))[0]
        await write_version(
            self._js,
            self._keys,
            commands_pb2.PutMemory(memory=memory, embedding=vector.tolist()),
            request_id=job.operation,
            wait_applied_seconds=self._settings.wait_applied_timeout_seconds,
        )
        async with forward_errors("vault"):
            return await self._vault.GetMemory(
                vault_pb2.GetMemoryRequest(name=memory.name), timeout=self._settings.call_timeout_seconds
            )

    async def _supersede_older(self, memory: memory_pb2.Memory) -> list[str]:
        """The cube serves one adapter: its other live ones are superseded by ``memory``."""
        adapters = await live_adapters(
            self._vault, memory.cube_id, call_seconds=self._settings.call_timeout_seconds
        )
        older = [m.name for m in adapters if m.name != memory.name]
        for name in older:
            async with forward_errors("lifecycle"):
                await self._lifecycle.Transition(
                    lifecycle_pb2.TransitionRequest(
                        name=name,
                        target_state=memory_pb2.MEMORY_STATE_SUPERSEDED,
                        related_name=memory.name,
                        reason="replaced by a newer adapter",
                        request_id=f"superseded-by/{memory.memory_id}",
                    ),
                    timeout=self._settings.call_timeout_seconds,
                )
        return older


async def setup(stack: AsyncExitStack, settings: TrainerSettings) -> Component:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    js = await open_jetstream(stack, settings.nats_url, "trainer")
    vault_channel: grpc.aio.Channel = await stack.enter_async_context(
        open_channel(settings.vault_addr, settings)
    )
    lifecycle_channel: grpc.aio.Channel = await stack.enter_async_context(
        open_channel(settings.lifecycle_addr, settings)
    )
    if not settings.service_api_key.get_secret_value():
        raise ValueError(
            "service_api_key is not set: the trainer calls the vault and lifecycle as the mesh's "
            "service principal (MEMOS_TRAINER_SERVICE_API_KEY; `make run` sets it)"
        )
    keys = await SubjectKeys.start(stack, js)
    lm = await asyncio.to_thread(load_language_model, settings)
    distillation = Distillation(
        settings,
        js,
        vault_pb2_grpc.VaultServiceStub(vault_channel),
        lifecycle_pb2_grpc.LifecycleServiceStub(lifecycle_channel),
        open_embedder(stack, settings),
        await Operations.open(js),
        Adapters(lm),
        keys,
    )
    jobs = await distillation.worker()
    return Component(registrations=[], background=[jobs.run], on_stop=jobs.stop)
