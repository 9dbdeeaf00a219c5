"""SchedulerService: search (retrieval under a budget), chat (generation with activation memory)
and preload (building a cube's activation memory)."""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import AsyncExitStack

import grpc

from memos.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from memos.vault.v1 import vault_pb2_grpc
from memos_sdk.wire import Bucket
from services.common import validation
from services.common.access import cube_id_at, reads, writes
from services.common.buckets import open_bucket
from services.common.bus import open_jetstream
from services.common.clients import open_channel
from services.common.embedder import open_query_embedder
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.generation import open_generator
from services.common.grpc_host import Component, Registration

from .activation import Activations
from .chat import Chat
from .retrieval import Retriever
from .settings import SchedulerSettings
from .usage import AccessRecorder

log = logging.getLogger(__name__)

MAX_TOP_K = 50
MAX_QUERY_CHARS = 4096


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, retriever: Retriever, activations: Activations, chat: Chat) -> None:
        self._retriever = retriever
        self._activations = activations
        self._chat = chat

    async def Search(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        query = request.query.strip()
        if not query:
            raise InvalidArgument("query is empty", reason="EMPTY_QUERY", field="query")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidArgument(
                f"query is longer than {MAX_QUERY_CHARS} characters", reason="QUERY_TOO_LONG"
            )
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgument(f"top_k must be 0..{MAX_TOP_K}", reason="INVALID_TOP_K", field="top_k")
        if request.token_budget < 0:
            raise InvalidArgument("token_budget must not be negative", reason="INVALID_BUDGET")
        chosen = await self._retriever.search(
            cube_id,
            query,
            top_k=request.top_k or 10,
            token_budget=request.token_budget,
            memory_filter=request.filter,
            reference_time=request.reference_time.ToDatetime(dt.UTC)
            if request.HasField("reference_time")
            else None,
        )
        response = scheduler_pb2.SearchResponse(total_tokens=sum(c.tokens for c in chosen))
        for c in chosen:  # added in place: a result built apart is copied again into the list
            response.results.add(memory=c.memory, score=c.score, tokens=c.tokens, text=c.text, span=c.span)
        return response

    async def Chat(self, request, context):
        async for response in self._chat.run(request):
            yield response

    async def Preload(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        if len(request.hint) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"hint is longer than {MAX_QUERY_CHARS} characters", reason="HINT_TOO_LONG")
        record, created = await self._activations.build(cube_id, request.hint)
        if record is None:
            raise FailedPrecondition(f"cube {cube_id} has no memories to preload", reason="NO_MEMORIES")
        return scheduler_pb2.PreloadResponse(activation=record, created=created)


ACCESS = {
    "Search": reads(cube_id_at()),
    "Chat": reads(cube_id_at()),
    # Builds the cube's KV cache: a change to what the cube holds.
    "Preload": writes(cube_id_at()),
}


async def setup(stack: AsyncExitStack, settings: SchedulerSettings) -> Component:
    channel: grpc.aio.Channel = await stack.enter_async_context(open_channel(settings.vault_addr, settings))
    vault = vault_pb2_grpc.VaultServiceStub(channel)
    js = await open_jetstream(stack, settings.nats_url, "scheduler")
    usage = AccessRecorder(js, enabled=settings.record_usage, linger_seconds=settings.usage_linger_seconds)
    stack.push_async_callback(usage.close)
    retriever = Retriever(settings, vault, open_query_embedder(stack, settings), usage)
    generator = open_generator(stack, settings)
    activations = Activations(
        settings,
        js=js,
        bucket=await open_bucket(js, Bucket.ACTIVATION),
        vault=vault,
        generator=generator,
        retriever=retriever,
    )
    stack.push_async_callback(activations.close)
    servicer = SchedulerServicer(
        retriever,
        activations,
        Chat(settings, retriever=retriever, activations=activations, generator=generator, vault=vault),
    )
    add = scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server
    background, on_stop = [], None
    if settings.auto_preload:
        watcher = await activations.watch_changes()
        background, on_stop = [watcher.run], watcher.stop
    return Component(
        registrations=[Registration.of(scheduler_pb2.DESCRIPTOR, "SchedulerService", add, servicer, ACCESS)],
        background=background,
        on_stop=on_stop,
    )
