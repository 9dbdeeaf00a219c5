"""Budgeted assembly: the best items, in rank order, that fit a token budget, without repeats.

Neighbouring pieces of one session that match well together are joined into one span under a
single date line, in session order, and so is the reply to a question that matched, which is
usually the answer, and the question a reply that matched answers, which tells what the asker
wanted and why; one span costs fewer tokens than its pieces as separate items.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens
from services.common.memory_text import DATE_PREFIX, said, tokens_of
from services.common.places import Place, asks, asks_for, place, turn_before


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


def joined(span: Sequence[memory_pb2.Memory]) -> tuple[str, int]:
    """The members' texts joined, and its tokens; a date line repeated from the first member is
    dropped. The tokens are the members' stored counts less the dropped date lines': no token
    spans the space between two texts or ends a date line, so the sum is exact."""
    first = span[0].text
    date = DATE_PREFIX.match(first)
    parts, tokens = [first], tokens_of(span[0])
    for memory in span[1:]:
        text = memory.text
        tokens += tokens_of(memory)
        if date and text.startswith(date.group(0)):
            text = text[date.end() :]
            tokens -= count_tokens(date.group(0))
        parts.append(text)
    return " ".join(parts), tokens


def assemble(
    candidates: Iterable[memory_pb2.ScoredMemory],
    *,
    top_k: int,
    token_budget: int,
    join_ratio: float = 0.7,
    max_span: int = 4,
    reply_tokens: int = 60,
    replies: Sequence[memory_pb2.Memory] = (),
    question_tokens: int = 60,
    questions: Sequence[memory_pb2.Memory] = (),
    length_cost: float = 0.0,
    free_tokens: int = 120,
) -> list[Assembled]:
    """Take candidates best first, each with the neighbours scoring at least ``join_ratio`` of it;
    a question in the span takes the reply after it too, however the reply scores, when the reply
    is among the candidates or ``replies`` and has at most ``reply_tokens`` (0: never); a longer
    reply would cost more of the budget than the answer in it is worth. ``max_span`` memories at
    most. ``replies`` join spans only: they are not items of their own.

    Likewise a span around a piece of a reply takes the question the reply answers (the end of
    the turn before it, by another speaker), when that is among the candidates or ``questions``
    and has at most ``question_tokens`` (0: never): what was asked tells what the asker wanted
    and why, which the reply rarely repeats.

    Items are then ranked by their score less ``length_cost`` for every 100 tokens beyond
    ``free_tokens``: a long span fills the budget that several short items would share, so it has
    to match better to come first. That rank score is the score an item reports.

    An item all of whose turns earlier items already show (another piece of a long turn that an
    earlier span carries, say) goes after every item that shows a turn not yet shown: it says
    more of what is already there.

    ``token_budget`` 0 means no limit. A span that does not fit is tried as its best memory
    alone (its other members are not offered again); an item that still does not fit is skipped,
    not truncated: the text a client receives is always made of whole memories. Exact repeats are
    skipped.

    A statement (a fact the reader took from a long piece) stands for that piece: when the piece
    is among the candidates, the statement takes its place in the session, with the piece's
    neighbours around it, and the piece itself is not taken later. The sentence that matched
    comes with the conversation around it, not with the rest of a long turn. A statement whose
    words an earlier item carries is skipped.
    """
    items = [
        replace(item, score=item.score - length_cost * max(0, item.tokens - free_tokens) / 100)
        for item in _spans(
            list(candidates), join_ratio, max_span, reply_tokens, question_tokens, (*replies, *questions)
        )
    ]
    items.sort(key=lambda item: -item.score)  # stable: equal scores keep the candidates' order
    items = _new_turns_first(items)
    texts: set[str] | None = None  # every item's text, normalised: made when a span is cut
    chosen: list[Assembled] = []
    used = 0

    def fits(item: Assembled) -> bool:
        return not token_budget or used + item.tokens <= token_budget

    for item in items:
        if len(chosen) >= top_k:
            break
        if not fits(item) and len(item.span) > 1:
            item = _item(item.memory, item.score, (item.memory,))  # its best memory alone
            if texts is None:
                texts = {_normal(other.text) for other in items}
            if _normal(item.text) in texts:
                continue
        if fits(item):
            used += item.tokens
            chosen.append(item)
    return chosen


def _new_turns_first(items: list[Assembled]) -> list[Assembled]:
    """``items`` in order, those whose turns all show in earlier ones moved after the rest."""
    shown: set[str] = set()
    new, again = [], []
    for item in items:
        turns = {s.turn_id for m in item.span for s in m.provenance.sources if s.turn_id}
        if turns and turns <= shown:
            again.append(item)
        else:
            new.append(item)
            shown |= turns
    return new + again


def _item(memory: memory_pb2.Memory, score: float, span: tuple[memory_pb2.Memory, ...]) -> Assembled:
    text, tokens = joined(span)
    return Assembled(memory, score, tokens, text, span)


def _spans(
    ranked: list[memory_pb2.ScoredMemory],
    join_ratio: float,
    max_span: int,
    reply_tokens: int,
    question_tokens: int,
    joiners: Sequence[memory_pb2.Memory],
) -> list[Assembled]:
    """Every candidate's span, best first; a memory joins the first span that takes it.
    ``joiners`` (the replies and questions fetched) only join spans."""
    anchors = len(ranked)
    ranked += [memory_pb2.ScoredMemory(memory=m, score=0.0) for m in joiners]
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
    items: list[Assembled] = []
    texts: list[str] = []  # each item's text, normalised

    def piece_saying(words: str, memory: memory_pb2.Memory) -> int | None:
        sources = memory.provenance.sources
        if len(sources) != 1:
            return None
        for j in pieces_of.get((sources[0].session_id, sources[0].turn_id), ()):
            if j not in taken and words in _normal(ranked[j].memory.text):
                return j
        return None

    for i, candidate in enumerate(ranked[:anchors]):
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
        if where and question_tokens and max_span > 1:
            asked = turn_before(ranked[anchor].memory)
            j = at.get(asked) if asked else None
            if (
                j is not None
                and j not in taken
                and asks_for(ranked[j].memory, ranked[anchor].memory)
                and tokens_of(ranked[j].memory) <= question_tokens
            ):
                members.append(j)  # the question the reply answers, whatever it scores
        # Neighbours join as they would join the piece.
        reference = ranked[anchor].score if anchor is not None else candidate.score
        if where and reference > 0 and max_span > 1:
            for step in (-1, 1):
                position = where[1] + step
                while len(members) < max_span:
                    j = at.get((where[0], position))
                    if j is None or j in taken:
                        break
                    if j in members:  # the question, already in
                        position += step
                        continue
                    # The reply to a question in the span is its answer, however it scores.
                    before = at[(where[0], position - 1)] if step == 1 else None
                    answers = (
                        before is not None
                        and asks(ranked[i if before == anchor else before].memory)
                        and tokens_of(ranked[j].memory) <= reply_tokens
                    )
                    if ranked[j].score < join_ratio * reference and not answers:
                        break
                    members.append(j)
                    position += step
        members.sort(key=lambda j: places[j][1] if places[j] else 0)
        item = _item(
            candidate.memory, candidate.score, tuple(ranked[i if j == anchor else j].memory for j in members)
        )
        normal = _normal(item.text)
        if normal in texts:
            continue
        items.append(item)
        texts.append(normal)
        taken.update(members)
        if anchor is not None:
            taken.add(anchor)  # a statement stands for its piece even when it is alone
    return items
