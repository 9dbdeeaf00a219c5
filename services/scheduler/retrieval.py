"""Retrieval for a query: embed it, ask the vault's hybrid query, assemble spans under a budget."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from services.common.clients import forward_errors
from services.common.clock import to_timestamp
from services.common.embedder import Embeds
from services.common.timeparse import named_period

from .assembly import Assembled, assemble
from .settings import SchedulerSettings
from .usage import AccessRecorder

# Memories are dated when they were said, and people tell of events on the day or a few days after.
SAID_BEFORE = dt.timedelta(days=1)
SAID_AFTER = dt.timedelta(days=3)


def time_boost(query: str, reference: dt.datetime) -> vault_pb2.MemoryFilter | None:
    """The memories said in the time the query names, read at ``reference``; None when it names none."""
    period = named_period(query, reference)
    if period is None:
        return None
    start = dt.datetime.combine(period.start, dt.time(), dt.UTC) - SAID_BEFORE
    end = dt.datetime.combine(period.end, dt.time(), dt.UTC) + SAID_AFTER
    return vault_pb2.MemoryFilter(event_time_after=to_timestamp(start), event_time_before=to_timestamp(end))


def favour_named_speakers(
    query: str, found: Sequence[memory_pb2.ScoredMemory], weight: float
) -> Sequence[memory_pb2.ScoredMemory]:
    """``found`` re-ranked with ``weight`` added for memories said by a speaker the query names
    ("What did Melanie paint?"): what a person said is what a question about them asks for. A
    query naming every speaker among the candidates favours none."""
    speakers = {m.memory.speaker for m in found if m.memory.speaker}
    named = {s for s in speakers if re.search(rf"(?<!\w){re.escape(s)}(?!\w)", query, re.IGNORECASE)}
    if not weight or not named or named == speakers:
        return found
    for m in found:
        if m.memory.speaker in named:
            m.score += weight  # the vault's reply is ours to change
    return sorted(found, key=lambda m: -m.score)


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
        reference_time: dt.datetime | None = None,
        record_usage: bool = True,
    ) -> list[Assembled]:
        """The assembled results; ``record_usage`` counts them as used (a search or a chat turn
        uses them, a prediction does not). Memories said in a time the query names ("last week",
        read at ``reference_time``, default now) rank higher."""
        boost = time_boost(query, reference_time or dt.datetime.now(dt.UTC))
        embedding = (await self._embedder.embed([query]))[0]
        async with forward_errors("vault"):
            found = await self._vault.Query(
                vault_pb2.QueryRequest(
                    cube_id=cube_id,
                    text=query,
                    embedding=embedding.tolist(),
                    limit=max(self._settings.candidates, 2 * top_k),
                    filter=memory_filter,
                    boost=boost,
                    boost_weight=self._settings.time_boost if boost else 0.0,
                    # Items grow mostly from the first top_k candidates; replies and questions
                    # cost one read.
                    replies=top_k if self._settings.reply_tokens else 0,
                    questions=top_k if self._settings.question_tokens else 0,
                ),
                timeout=self._settings.vault_timeout_seconds,
            )
        chosen = assemble(
            favour_named_speakers(query, found.results, self._settings.speaker_boost),
            top_k=top_k,
            token_budget=token_budget,
            join_ratio=self._settings.join_ratio,
            max_span=self._settings.max_span,
            reply_tokens=self._settings.reply_tokens,
            replies=found.replies,
            question_tokens=self._settings.question_tokens,
            questions=found.questions,
            length_cost=self._settings.length_cost,
            free_tokens=self._settings.free_tokens,
        )
        if record_usage:
            self._usage.record(cube_id, (m.name for a in chosen for m in a.span))
        return chosen
