"""Retrieval for a query: embed it, ask the vault's hybrid query, assemble spans under a budget."""

from __future__ import annotations

from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from services.common.clients import forward_errors
from services.common.embedder import Embeds

from .assembly import Assembled, assemble
from .settings import SchedulerSettings
from .usage import AccessRecorder


class Retriever:
    def __init__(
        self,
        settings: SchedulerSettings,
        vault: vault_pb2_grpc.VaultServiceStub,
        embedder: Embeds,
        usage: AccessRecorder,
    ) -> None:
        self._settings = settings
        self._vault = vault
        self._embedder = embedder
        self._usage = usage

    async def search(
        self,
        cube_id: str,
        query: str,
        *,
        top_k: int,
        token_budget: int,
        memory_filter: vault_pb2.MemoryFilter | None = None,
        record_usage: bool = True,
    ) -> list[Assembled]:
        """The assembled results; ``record_usage`` counts them as used (a search or a chat turn
        uses them, a prediction does not)."""
        embedding = (await self._embedder.embed([query]))[0]
        async with forward_errors("vault"):
            found = await self._vault.Query(
                vault_pb2.QueryRequest(
                    cube_id=cube_id,
                    text=query,
                    embedding=embedding.tolist(),
                    limit=self._settings.candidates,
                    filter=memory_filter,
                ),
                timeout=self._settings.vault_timeout_seconds,
            )
        chosen = assemble(
            found.results,
            top_k=top_k,
            token_budget=token_budget,
            join_ratio=self._settings.join_ratio,
            max_span=self._settings.max_span,
        )
        if record_usage:
            self._usage.record(cube_id, (m.name for a in chosen for m in a.span))
        return chosen
