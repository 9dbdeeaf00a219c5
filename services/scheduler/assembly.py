"""Budgeted assembly: the best items, in rank order, that fit a token budget, without repeats."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens


@dataclass(frozen=True, slots=True)
class Assembled:
    memory: memory_pb2.Memory
    score: float
    tokens: int


def assemble(
    candidates: Iterable[memory_pb2.ScoredMemory], *, top_k: int, token_budget: int
) -> list[Assembled]:
    """Take candidates best first; skip exact repeats of a text and items that no longer fit.

    ``token_budget`` 0 means no limit. An item that does not fit is skipped, not truncated: the
    text a client receives is always the whole item.
    """
    chosen: list[Assembled] = []
    seen: set[str] = set()
    used = 0
    for candidate in candidates:
        if len(chosen) >= top_k:
            break
        text = candidate.memory.text
        key = " ".join(text.lower().split())
        if key in seen:
            continue
        tokens = count_tokens(text)
        if token_budget and used + tokens > token_budget:
            continue
        seen.add(key)
        used += tokens
        chosen.append(Assembled(candidate.memory, candidate.score, tokens))
    return chosen
