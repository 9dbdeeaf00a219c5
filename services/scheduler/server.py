"""SchedulerService: query embedding, hybrid retrieval in the vault, budgeted assembly."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import grpc

from memos.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from services.common import validation
from services.common.clients import forward_errors, open_channel
from services.common.embedder import Embedder, open_embedder
from services.common.errors import InvalidArgument, Unimplemented
from services.common.grpc_host import Component, Registration

from .assembly import assemble
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

MAX_TOP_K = 50
MAX_QUERY_CHARS = 4096


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self, settings: SchedulerSettings, vault: vault_pb2_grpc.VaultServiceStub, embedder: Embedder
    ):
        self._settings = settings
        self._vault = vault
        self._embedder = embedder

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
        embedding = (await self._embedder.embed([query]))[0]
        async with forward_errors("vault"):
            found = await self._vault.Query(
                vault_pb2.QueryRequest(
                    cube_id=cube_id,
                    text=query,
                    embedding=embedding.tolist(),
                    limit=self._settings.candidates,
                    filter=request.filter,
                ),
                timeout=self._settings.vault_timeout_seconds,
            )
        chosen = assemble(found.results, top_k=request.top_k or 10, token_budget=request.token_budget)
        return scheduler_pb2.SearchResponse(
            results=[
                scheduler_pb2.SearchResult(memory=c.memory, score=c.score, tokens=c.tokens) for c in chosen
            ],
            total_tokens=sum(c.tokens for c in chosen),
        )

    async def Chat(self, request, context):
        raise Unimplemented("Chat arrives with activation memory (issue 4)")
        yield  # pragma: no cover - makes this a streaming handler

    async def Preload(self, request, context):
        raise Unimplemented("Preload arrives with activation memory (issue 4)")


async def setup(stack: AsyncExitStack, settings: SchedulerSettings) -> Component:
    channel: grpc.aio.Channel = await stack.enter_async_context(open_channel(settings.vault_addr))
    servicer = SchedulerServicer(
        settings, vault_pb2_grpc.VaultServiceStub(channel), open_embedder(stack, settings)
    )
    add = scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server
    return Component(
        registrations=[Registration.of(scheduler_pb2.DESCRIPTOR, "SchedulerService", add, servicer)]
    )
