"""Budgeted assembly: the best items, in rank order, that fit a token budget, without repeats.

Neighbouring pieces of one session that match well together are joined into one span under a
single date line, in session order, and so is the reply to a question that matched, which is
usually the answer; one span costs fewer tokens than its pieces as separate items.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens
from services.common.memory_text import DATE_PREFIX, said
from services.common.places import Place, asks, place


@dataclass(frozen=True, slots=True)
class Assembled:
    memory: memory_pb2.Memory  # the memory that matched
    score: float
    tokens: int
    text: str  # what goes in front of the model
    span: tuple[memory_pb2.Memory, ...]  # every memory the text carries, in session order


def _is_statement(memory: memory_pb2.Memory, at: Place | None) -> bool:
    return at is None and memory.type == memory_pb2.MEMORY_TYPE_FACT


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def span_text(span: Sequence[memory_pb2.Memory]) -> str:
    """The members' texts joined; a date line repeated from the first member is dropped."""
    first = span[0].text
    date = DATE_PREFIX.match(first)
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
    reply_tokens: int = 60,
    replies: Sequence[memory_pb2.Memory] = (),
) -> list[Assembled]:
    """Take candidates best first, each with the neighbours scoring at least ``join_ratio`` of it;
    a question in the span takes the reply after it too, however the reply scores, when the reply
    is among the candidates or ``replies`` and has at most ``reply_tokens`` (0: never); a longer
    reply would cost more of the budget than the answer in it is worth. ``max_span`` memories at
    most. ``replies`` join spans only: they are not items of their own.

    ``token_budget`` 0 means no limit. A span that does not fit is tried as its best memory
    alone; an item that still does not fit is skipped, not truncated: the text a client receives
    is always made of whole memories. Exact repeats are skipped.

    A statement (a fact the reader took from a long piece) stands for that piece: when the piece
    is among the candidates, the statement takes its place in the session, with the piece's
    neighbours around it, and the piece itself is not taken later. The sentence that matched
    comes with the conversation around it, not with the rest of a long turn. A statement whose
    words an earlier item carries is skipped.
    """
    ranked = list(candidates)
    anchors = len(ranked)  # the replies after them only join spans
    ranked += [memory_pb2.ScoredMemory(memory=m, score=0.0) for m in replies]
    places = [place(c.memory) for c in ranked]
    at: dict[Place, int] = {}
    for i, where in enumerate(places):
        if where:
            at.setdefault(where, i)
    pieces_of: dict[tuple[str, str], list[int]] = {}  # the numbered pieces of each turn
    for i, where in enumerate(places[:anchors]):
        if where:
            source = ranked[i].memory.provenance.sources[0]
            pieces_of.setdefault((source.session_id, source.turn_id), []).append(i)
    taken: set[int] = set()
    chosen: list[Assembled] = []
    texts: list[str] = []  # each chosen item's text, normalised

    def piece_saying(words: str, memory: memory_pb2.Memory) -> int | None:
        sources = memory.provenance.sources
        if len(sources) != 1:
            return None
        for j in pieces_of.get((sources[0].session_id, sources[0].turn_id), ()):
            if j not in taken and words in _normal(ranked[j].memory.text):
                return j
        return None

    used = 0
    for i, candidate in enumerate(ranked[:anchors]):
        if len(chosen) >= top_k:
            break
        if i in taken:
            continue
        taken.add(i)
        anchor: int | None = i
        if _is_statement(candidate.memory, places[i]):
            words = _normal(said(candidate.memory))
            if any(words in earlier for earlier in texts):
                continue
            anchor = piece_saying(words, candidate.memory)
        members = [i] if anchor is None else [anchor]
        where = places[anchor] if anchor is not None else None
        # Neighbours join as they would join the piece.
        reference = ranked[anchor].score if anchor is not None else candidate.score
        if where and reference > 0 and max_span > 1:
            for step in (-1, 1):
                position = where[1] + step
                while len(members) < max_span:
                    j = at.get((where[0], position))
                    if j is None or j in taken:
                        break
                    # The reply to a question in the span is its answer, however it scores.
                    before = at[(where[0], position - 1)] if step == 1 else None
                    answers = (
                        before is not None
                        and asks(ranked[i if before == anchor else before].memory)
                        and count_tokens(ranked[j].memory.text) <= reply_tokens
                    )
                    if ranked[j].score < join_ratio * reference and not answers:
                        break
                    members.append(j)
                    position += step
        members.sort(key=lambda j: places[j][1] if places[j] else 0)
        for attempt in (members, [i]) if len(members) > 1 else ([i],):
            span = tuple(ranked[i if j == anchor else j].memory for j in attempt)
            text = span_text(span)
            normal = _normal(text)
            if normal in texts:
                break
            tokens = count_tokens(text)
            if token_budget and used + tokens > token_budget:
                continue
            used += tokens
            chosen.append(Assembled(candidate.memory, candidate.score, tokens, text, span))
            texts.append(normal)
            taken.update(attempt)
            if anchor is not None:
                taken.add(anchor)  # a statement stands for its piece even when it is alone
            break
    return chosen
