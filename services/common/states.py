"""The life-cycle state machine of a memory: which states are live and which moves are legal.

States change only through these moves (the lifecycle's Transition and its rules); a memory is
never thrown away by a move: DELETED keeps every version until DeleteMemory purges it.
"""

from __future__ import annotations

from memos.type.v1 import memory_pb2

S = memory_pb2.MemoryState

# Searched and listed by default.
LIVE = frozenset({S.MEMORY_STATE_GENERATED, S.MEMORY_STATE_ACTIVATED})

_RETIRE = {S.MEMORY_STATE_ARCHIVED, S.MEMORY_STATE_EXPIRED, S.MEMORY_STATE_DELETED}
_REPLACE = {S.MEMORY_STATE_MERGED, S.MEMORY_STATE_SUPERSEDED}

TRANSITIONS: dict[int, frozenset[int]] = {
    S.MEMORY_STATE_GENERATED: frozenset({S.MEMORY_STATE_ACTIVATED, *_RETIRE, *_REPLACE}),
    S.MEMORY_STATE_ACTIVATED: frozenset({*_RETIRE, *_REPLACE}),
    # Restoring brings a memory back as ACTIVATED: someone wanted it.
    S.MEMORY_STATE_ARCHIVED: frozenset(
        {S.MEMORY_STATE_ACTIVATED, S.MEMORY_STATE_EXPIRED, S.MEMORY_STATE_DELETED}
    ),
    S.MEMORY_STATE_EXPIRED: frozenset({S.MEMORY_STATE_ACTIVATED, S.MEMORY_STATE_DELETED}),
    S.MEMORY_STATE_MERGED: frozenset({S.MEMORY_STATE_ACTIVATED, S.MEMORY_STATE_DELETED}),
    S.MEMORY_STATE_SUPERSEDED: frozenset({S.MEMORY_STATE_ACTIVATED, S.MEMORY_STATE_DELETED}),
    S.MEMORY_STATE_DELETED: frozenset(),
}


def name(state: int) -> str:
    return S.Name(state).removeprefix("MEMORY_STATE_")


def is_legal(source: int, target: int) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def event_kind_value(state: int) -> str:
    """The <kind> of the event a move to ``state`` publishes (memory.archived, ...)."""
    return f"memory.{name(state).lower()}"
