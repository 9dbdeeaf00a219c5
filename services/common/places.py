"""Where a turn memory sits in its conversation, and what follows it.

The reader numbers the pieces of the turns it reads in one request in order (``SourceRef.position``),
so a piece's place is its session and number, and the piece said right after it is at the next
number; a turn's pieces are numbered one after the other (``SourceRef.piece`` counts them), so the
turn said before a piece's turn ends right before the turn's first piece. A memory drawn from
several turns, or from none in order (a statement), has no place.
"""

from __future__ import annotations

from memos.type.v1 import memory_pb2

Place = tuple[str, int]


def place(memory: memory_pb2.Memory) -> Place | None:
    sources = memory.provenance.sources
    if len(sources) != 1 or not sources[0].position:
        return None
    return sources[0].session_id, sources[0].position


def after(at: Place) -> Place:
    """The place of the piece said right after the one at ``at``."""
    return at[0], at[1] + 1


def turn_before(memory: memory_pb2.Memory) -> Place | None:
    """The place of the last piece of the turn said before ``memory``'s turn, if it has a place."""
    at = place(memory)
    if at is None:
        return None
    position = at[1] - memory.provenance.sources[0].piece - 1
    return (at[0], position) if position > 0 else None


def asks_for(question: memory_pb2.Memory, reply: memory_pb2.Memory) -> bool:
    """Whether ``question``, said in the turn before ``reply``'s, is what ``reply`` answers: it
    asks, and another speaker said it."""
    return asks(question) and question.speaker != reply.speaker


def place_key(at: Place) -> str:
    """A place as one string, for an index field."""
    return f"{at[0]}#{at[1]}"


def asks(memory: memory_pb2.Memory) -> bool:
    """Whether a memory ends in a question: what is said right after it is then usually its answer."""
    return memory.text.rstrip().endswith("?")
