"""From turns and documents to memory items: pieces of turns with absolute dates, and document chunks."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf import timestamp_pb2

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens, head_tokens, tail_tokens
from memos_sdk.wire import memory_name
from services.common import places
from services.common.clock import to_timestamp
from services.common.memory_text import said
from services.common.timeparse import human_date, resolve_relative


@dataclass(frozen=True, slots=True)
class Turn:
    """A validated message with its absolute time resolved."""

    id: str
    speaker: str
    text: str
    session_id: str
    time: dt.datetime | None
    image_caption: str = ""


def memory_id(*parts: str) -> str:
    """Deterministic: the same source in the same cube always names the same memory."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _new_memory(
    cube_id: str, mid: str, text: str, kind_type: int, now: timestamp_pb2.Timestamp
) -> memory_pb2.Memory:
    return memory_pb2.Memory(
        name=memory_name(cube_id, mid),
        cube_id=cube_id,
        memory_id=mid,
        kind=memory_pb2.MEMORY_KIND_PLAINTEXT,
        type=kind_type,
        state=memory_pb2.MEMORY_STATE_GENERATED,
        text=text,
        version=1,
        create_time=now,
        update_time=now,
    )


def _date_prefix(turn: Turn) -> str:
    return f"[{human_date(turn.time)}] " if turn.time else ""


def _source(turn: Turn, position: int = 0, piece: int = 0) -> memory_pb2.SourceRef:
    """Where an item comes from: its turn, and the turn's time when known."""
    source = memory_pb2.SourceRef(
        turn_id=turn.id, session_id=turn.session_id, speaker=turn.speaker, position=position, piece=piece
    )
    if turn.time is not None:
        source.time.CopyFrom(to_timestamp(turn.time))
    return source


def _said(speaker: str, text: str) -> str:
    return f"{speaker}: {text}" if speaker else text


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a turn small enough to be one memory item."""

    turn: Turn
    index: int
    text: str


def turn_pieces(turns: Sequence[Turn], piece_tokens: int) -> list[Piece]:
    """Each turn's words, relative dates resolved, image caption added, cut to about ``piece_tokens``."""
    pieces = []
    for turn in turns:
        text = resolve_relative(turn.text, turn.time) if turn.time else turn.text
        if turn.image_caption:
            text += f" [shared an image: {turn.image_caption}]"
        chunks = chunk_text(text, piece_tokens) or [text.strip()]
        pieces += [Piece(turn, i, chunk) for i, chunk in enumerate(chunks)]
    return pieces


def pieces_per_session(turns: Sequence[Turn], piece_tokens: int) -> dict[str, int]:
    """How many pieces, so how many numbers, each session's turns make (see ``turn_items``)."""
    return dict(Counter(piece.turn.session_id for piece in turn_pieces(turns, piece_tokens)))


def _context(
    pieces: Sequence[Piece], i: int, window_tokens: int, earlier: memory_pb2.Memory | None = None
) -> str:
    """A piece with up to ``window_tokens`` of each neighbour in the same session; the one before
    it is ``earlier`` (said in an earlier request) when the request holds none."""
    piece = pieces[i]
    session = piece.turn.session_id
    parts = []
    if i > 0 and pieces[i - 1].turn.session_id == session:
        before = pieces[i - 1]
        parts.append(_said(before.turn.speaker, tail_tokens(before.text, window_tokens)))
    elif earlier is not None:
        parts.append(_said(earlier.speaker, tail_tokens(said(earlier), window_tokens)))
    parts.append(_said(piece.turn.speaker, piece.text))
    if i + 1 < len(pieces) and pieces[i + 1].turn.session_id == session:
        after = pieces[i + 1]
        parts.append(_said(after.turn.speaker, head_tokens(after.text, window_tokens)))
    return _date_prefix(piece.turn) + " ".join(parts) if len(parts) > 1 else ""


# A speaker's statement about themselves: the first person, and nobody addressed.
_FIRST_PERSON = re.compile(r"(?i)\b(?:i|i'm|i've|i'd|i'll|my|me|mine|myself|we|we're|we've|our|us|ours)\b")
_SECOND_PERSON = re.compile(r"(?i)\b(?:you|your|you're|you've|you'd|you'll|yours|yourself)\b")
_FILLER = re.compile(r"(?i)\byou know\b")
_STATEMENT_END = re.compile(r"(?<=[.!?])\s+|\n+")
STATEMENT_MIN_TOKENS = 6


def statements(text: str) -> list[str]:
    """The sentences of ``text`` in which its speaker tells something of themselves.

    "By the way, I've added 25 postcards since I started collecting again." inside a long turn is
    a fact the turn's embedding blurs; alone it matches a question about it closely and costs
    few tokens. Questions and sentences addressing the listener ("I'd recommend you ...") are
    requests and advice, not facts about the speaker.
    """
    found = []
    for sentence in _STATEMENT_END.split(text):
        sentence = sentence.strip()
        if (
            count_tokens(sentence) >= STATEMENT_MIN_TOKENS
            and not sentence.endswith("?")
            and _FIRST_PERSON.search(sentence)
            and not _SECOND_PERSON.search(_FILLER.sub("", sentence))
        ):
            found.append(sentence)
    return found


def turn_items(
    cube_id: str,
    turns: Sequence[Turn],
    *,
    piece_tokens: int,
    context_tokens: int,
    request_id: str,
    principal: str,
    now: timestamp_pb2.Timestamp,
    numbered_from: Mapping[str, int],
    said_before: Mapping[str, memory_pb2.Memory] | None = None,
    statement_piece_tokens: int = 0,
    digest_tokens: int = 0,
) -> list[memory_pb2.Memory]:
    """One item per piece: "[8 May 2023] Caroline: words", sourced to its turn.

    A piece of at most ``context_tokens`` is also indexed under its context (see ``_context``,
    which takes up to ``context_tokens`` of each neighbour): short replies mean little alone.
    Pieces are numbered so that the scheduler can join neighbours that match together: each
    session's pieces in order, after ``numbered_from[session]`` (0 when absent), the numbers the
    reader took for this request (``numbers.SessionNumbers``). ``said_before[session]`` is the
    piece at that number, said in an earlier request: the context of the session's first piece
    here begins with it.

    A piece of more than ``statement_piece_tokens`` (0: none) also gives one fact item per
    statement the speaker makes of themselves in it (see ``statements``), sourced to the same
    turn and not numbered: a fact stands alone.

    With ``digest_tokens`` (0: none), each speaker's statements of a session also make digests
    of up to that many tokens (see ``_digests``), after all other items.
    """
    pieces = turn_pieces(turns, piece_tokens)
    said_by: list[tuple[Turn, str, memory_pb2.Memory]] = []  # statements, for digests
    numbers = dict(numbered_from)  # each session's last number so far
    items = []
    for i, piece in enumerate(pieces):
        turn = piece.turn
        numbers[turn.session_id] = number = numbers.get(turn.session_id, 0) + 1
        parts = ("turn", turn.id) if piece.index == 0 else ("turn", turn.id, str(piece.index))
        memory = _new_memory(
            cube_id,
            memory_id(*parts),
            _date_prefix(turn) + _said(turn.speaker, piece.text),
            memory_pb2.MEMORY_TYPE_TURN,
            now,
        )
        memory.speaker = turn.speaker
        if count_tokens(piece.text) <= context_tokens:
            first = number == numbered_from.get(turn.session_id, 0) + 1
            earlier = (said_before or {}).get(turn.session_id) if first else None
            memory.index_context = _context(pieces, i, context_tokens, earlier)
        source = _source(turn, position=number, piece=piece.index)
        if source.HasField("time"):
            memory.event_time.CopyFrom(source.time)
        memory.provenance.sources.append(source)
        memory.provenance.request_id = request_id
        memory.provenance.principal = principal
        memory.provenance.producer = "reader/turn"
        items.append(memory)
        long = statement_piece_tokens and count_tokens(piece.text) > statement_piece_tokens
        sentences = statements(piece.text) if long or digest_tokens else []
        # A long piece's statements are items of their own; a short piece says its statements.
        sayers = (
            _statement_items(cube_id, piece, memory, sentences, now) if long else [memory] * len(sentences)
        )
        if long:
            items += sayers
        said_by += [(turn, sentence, sayer) for sentence, sayer in zip(sentences, sayers, strict=True)]
    if digest_tokens:
        items += _digests(cube_id, said_by, digest_tokens, now)
    return items


DIGEST_MIN_STATEMENTS = 2  # one statement is an item already


def _digests(
    cube_id: str,
    said_by: Sequence[tuple[Turn, str, memory_pb2.Memory]],
    digest_tokens: int,
    now: timestamp_pb2.Timestamp,
) -> list[memory_pb2.Memory]:
    """What each speaker says of themselves in a session, gathered: their statements in order,
    cut into digests of up to ``digest_tokens``.

    A question that gathers ("How many health devices do I use?") has its answers in asides of
    several sessions, each among long talk on the session's topic; a digest of a session's
    statements matches such a question as one item, where each statement alone is outranked by
    the talk around it. ``said_by`` holds (turn, statement, the item that says it), in order.

    A digest is a summary sourced to every turn it quotes; its parents (``lineage``) are the
    items that say its statements, and its dense key is made from theirs (``derived_embeddings``),
    not by the model.
    """
    groups: dict[tuple[str, str], list[list[tuple[Turn, str, memory_pb2.Memory]]]] = {}
    sizes: dict[tuple[str, str], int] = {}  # tokens of each group's last chunk
    for entry in said_by:
        turn, sentence, _ = entry
        group = (turn.session_id, turn.speaker)
        chunks = groups.setdefault(group, [[]])
        tokens = count_tokens(sentence)
        if chunks[-1] and sizes[group] + tokens > digest_tokens:
            chunks.append([])
            sizes[group] = 0
        chunks[-1].append(entry)
        sizes[group] = sizes.get(group, 0) + tokens
    digests = []
    for (_, speaker), chunks in groups.items():
        for k, chunk in enumerate(chunks):
            if len(chunk) < DIGEST_MIN_STATEMENTS:
                continue
            first = chunk[0][0]
            memory = _new_memory(
                cube_id,
                memory_id("digest", speaker, first.id, str(k)),
                _date_prefix(first) + _said(speaker, " ".join(sentence for _, sentence, _ in chunk)),
                memory_pb2.MEMORY_TYPE_SUMMARY,
                now,
            )
            memory.speaker = speaker
            parents = list(dict.fromkeys(item.name for _, _, item in chunk))
            memory.lineage.parent_names.extend(parents)
            said_in = chunk[0][2]
            if said_in.HasField("event_time"):
                memory.event_time.CopyFrom(said_in.event_time)
            memory.provenance.sources.extend(_source(turn) for turn in dict.fromkeys(t for t, _, _ in chunk))
            memory.provenance.request_id = said_in.provenance.request_id
            memory.provenance.principal = said_in.provenance.principal
            memory.provenance.producer = "reader/digest"
            digests.append(memory)
    return digests


def _statement_items(
    cube_id: str,
    piece: Piece,
    piece_memory: memory_pb2.Memory,
    sentences: Sequence[str],
    now: timestamp_pb2.Timestamp,
) -> list[memory_pb2.Memory]:
    items = []
    for k, sentence in enumerate(sentences):
        memory = _new_memory(
            cube_id,
            memory_id("statement", piece.turn.id, str(piece.index), str(k)),
            _date_prefix(piece.turn) + _said(piece.turn.speaker, sentence),
            memory_pb2.MEMORY_TYPE_FACT,
            now,
        )
        memory.speaker = piece_memory.speaker
        if piece_memory.HasField("event_time"):
            memory.event_time.CopyFrom(piece_memory.event_time)
        memory.provenance.CopyFrom(piece_memory.provenance)
        memory.provenance.sources[0].position = 0
        memory.provenance.producer = "reader/statement"
        items.append(memory)
    return items


def embedded(items: Sequence[memory_pb2.Memory]) -> list[memory_pb2.Memory]:
    """The items the model embeds; the others' keys are made from their parents' vectors."""
    return [item for item in items if not item.lineage.parent_names]


def derived_embeddings(
    items: Sequence[memory_pb2.Memory], vectors: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The dense key of each item made from others (a digest): the mean of its parents'
    ``vectors`` (by name), normalised. Measured on both dev sets, as good as embedding the
    digest's text (and better on LongMemEval), at no model call."""
    keys = {}
    for item in items:
        if item.lineage.parent_names:
            vector = np.mean([vectors[name] for name in item.lineage.parent_names], axis=0)
            keys[item.name] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return keys


def context_after_earlier(
    items: Sequence[memory_pb2.Memory], said_before: Mapping[str, memory_pb2.Memory]
) -> list[memory_pb2.Memory]:
    """The items whose context begins with a piece of an earlier request (``said_before``). That
    piece's vector is not at hand to add (``context_embeddings``), so their context text is
    embedded instead: as good a key, measured on LoCoMo dev, for one more text to embed."""
    found = []
    for item in items:
        at = places.place(item)
        earlier = said_before.get(at[0]) if at and item.index_context else None
        before = places.place(earlier) if earlier is not None else None
        if before is not None and at == places.after(before):
            found.append(item)
    return found


def context_embeddings(
    items: Sequence[memory_pb2.Memory], vectors: np.ndarray, weight: float
) -> dict[str, np.ndarray]:
    """The dense key of each item's context: its vector plus ``weight`` times each neighbour's.

    Measured on LoCoMo dev, this finds short turns at least as well as embedding the context's
    text, and it costs no model call: ingest embeds each item once.
    """
    at = {}
    for i, item in enumerate(items):
        if item.provenance.sources and item.provenance.sources[0].position:
            source = item.provenance.sources[0]
            at[source.session_id, source.position] = i
    keys = {}
    for i, item in enumerate(items):
        if not item.index_context or not item.provenance.sources:
            continue
        source = item.provenance.sources[0]
        vector = vectors[i].astype(np.float32, copy=True)
        for position in (source.position - 1, source.position + 1):
            j = at.get((source.session_id, position))
            if j is not None:
                vector += weight * vectors[j]
        keys[item.name] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return keys


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, target_tokens: int) -> list[str]:
    """Split on paragraphs, then sentences, packing pieces up to about ``target_tokens``."""
    pieces: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count_tokens(paragraph) <= target_tokens:
            pieces.append(paragraph)
        else:
            pieces += [s.strip() for s in _SENTENCE.split(paragraph) if s.strip()]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        tokens = count_tokens(piece)
        if current and size + tokens > target_tokens:
            chunks.append(" ".join(current))
            current, size = [], 0
        current.append(piece)
        size += tokens
    if current:
        chunks.append(" ".join(current))
    return chunks


def document_items(
    cube_id: str,
    *,
    document_id: str,
    title: str,
    text: str,
    time: dt.datetime | None,
    tags: Sequence[str],
    target_tokens: int,
    request_id: str,
    principal: str,
    now: timestamp_pb2.Timestamp,
) -> list[memory_pb2.Memory]:
    items = []
    for i, chunk in enumerate(chunk_text(text, target_tokens)):
        body = f"{title}: {chunk}" if title else chunk
        memory = _new_memory(
            cube_id, memory_id("document", document_id, str(i)), body, memory_pb2.MEMORY_TYPE_DOCUMENT, now
        )
        memory.tags.extend(tags)
        if time is not None:
            memory.event_time.CopyFrom(to_timestamp(time))
        memory.provenance.sources.append(
            memory_pb2.SourceRef(document_id=document_id, turn_id=f"{document_id}#{i}")
        )
        memory.provenance.request_id = request_id
        memory.provenance.principal = principal
        memory.provenance.producer = "reader/document"
        items.append(memory)
    return items
