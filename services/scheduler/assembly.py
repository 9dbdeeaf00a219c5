"""Budgeted assembly: the best items, in rank order, that fit a token budget, without repeats.

Neighbouring pieces of one session that match well together are joined into one span under a
single date line, in session order: the reply after a matching question is usually the answer,
and one span costs fewer tokens than its pieces as separate items.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens

_DATE_LINE = re.compile(r"^\[[^\]\n]{1,40}\] ")


@dataclass(frozen=True, slots=True)
class Assembled:
    memory: memory_pb2.Memory  # the memory that matched
    score: float
    tokens: int
    text: str  # what goes in front of the model
    span: tuple[memory_pb2.Memory, ...]  # every memory the text carries, in session order


def _place(memory: memory_pb2.Memory) -> tuple[str, int] | None:
    sources = memory.provenance.sources
    if len(sources) != 1 or not sources[0].position:
        return None
    return sources[0].session_id, sources[0].position


def span_text(span: Sequence[memory_pb2.Memory]) -> str:
    """The members' texts joined; a date line repeated from the first member is dropped."""
    first = span[0].text
    date = _DATE_LINE.match(first)
    parts = [first]
    for memory in span[1:]:
        text = memory.text
        if date and text.startswith(date.group(0)):
            text = text[date.end() :]
        parts.append(text)
    return " ".join(parts)


def assemble(
    candidates: Iterable[memory_pb2.ScoredMemory],
    *,
    top_k: int,
    token_budget: int,
    join_ratio: float = 0.7,
    max_span: int = 4,
) -> list[Assembled]:
    """Take candidates best first, each with the neighbours scoring at least ``join_ratio`` of it.

    ``token_budget`` 0 means no limit. A span that does not fit is tried as its best memory
    alone; an item that still does not fit is skipped, not truncated: the text a client receives
    is always made of whole memories. Exact repeats of a text are skipped.
    """
    ranked = list(candidates)
    places = [_place(c.memory) for c in ranked]
    at = {place: i for i, place in enumerate(places) if place}
    taken: set[int] = set()
    seen: set[str] = set()
    chosen: list[Assembled] = []
    used = 0
    for i, candidate in enumerate(ranked):
        if len(chosen) >= top_k:
            break
        if i in taken:
            continue
        members = [i]
        place = places[i]
        if place and candidate.score > 0 and max_span > 1:
            for step in (-1, 1):
                position = place[1] + step
                while len(members) < max_span:
                    j = at.get((place[0], position))
                    if j is None or j in taken or ranked[j].score < join_ratio * candidate.score:
                        break
                    members.append(j)
                    position += step
        members.sort(key=lambda j: places[j][1] if places[j] else 0)
        for attempt in (members, [i]) if len(members) > 1 else ([i],):
            span = tuple(ranked[j].memory for j in attempt)
            text = span_text(span)
            tokens = count_tokens(text)
            if token_budget and used + tokens > token_budget:
                continue
            key = " ".join(text.lower().split())
            if key not in seen:
                seen.add(key)
                used += tokens
                chosen.append(Assembled(candidate.memory, candidate.score, tokens, text, span))
            taken.update(attempt)
            break
        taken.add(i)
    return chosen
