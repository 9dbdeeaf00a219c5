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
from services.common.memory_text import said

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


def _is_statement(span: Sequence[memory_pb2.Memory]) -> bool:
    return len(span) == 1 and span[0].type == memory_pb2.MEMORY_TYPE_FACT


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


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
    is always made of whole memories. Exact repeats are skipped, and so is a statement (a fact
    the reader took from a turn) whose words an earlier item carries; a turn chosen after its
    statement takes the statement's place instead of a new one.
    """
    ranked = list(candidates)
    places = [_place(c.memory) for c in ranked]
    at = {place: i for i, place in enumerate(places) if place}
    taken: set[int] = set()
    chosen: list[Assembled] = []
    texts: list[str] = []  # each chosen item's text, normalised
    statements: list[str | None] = []  # each chosen statement's words, normalised; None for others
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
            normal = _normal(text)
            words = _normal(said(span[0])) if _is_statement(span) else None
            if words is not None:
                if any(words in earlier for earlier in texts):
                    break
                carried = []
            else:
                if normal in texts:
                    break
                carried = [k for k, w in enumerate(statements) if w is not None and w in normal]
            tokens = count_tokens(text)
            freed = sum(chosen[k].tokens for k in carried)
            if token_budget and used - freed + tokens > token_budget:
                continue
            used += tokens - freed
            if carried:
                # The statements this item carries give it the place of the first of them.
                first = carried[0]
                chosen[first] = Assembled(candidate.memory, chosen[first].score, tokens, text, span)
                texts[first], statements[first] = normal, None
                for k in reversed(carried[1:]):
                    del chosen[k], texts[k], statements[k]
            else:
                chosen.append(Assembled(candidate.memory, candidate.score, tokens, text, span))
                texts.append(normal)
                statements.append(words)
            taken.update(attempt)
            break
        taken.add(i)
    return chosen
