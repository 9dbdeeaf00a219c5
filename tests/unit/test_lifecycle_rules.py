"""The state machine, the scheduled rules (TTL, decay, promotion) and the conflict judge."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import duration_pb2

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from services.common import states
from services.common.clock import to_timestamp
from services.common.errors import InvalidArgument
from services.lifecycle import policies
from services.lifecycle.conflicts import judge
from services.lifecycle.rules import due, importance

S = memory_pb2.MemoryState
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOW = T0.timestamp()


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(dt.timedelta(seconds=seconds))
    return d


def _memory(
    text: str = "x",
    *,
    state: int = S.MEMORY_STATE_GENERATED,
    age: float = 0,
    accesses: int = 0,
    idle: float | None = None,
    speaker: str = "Alice",
    day: int = 1,
) -> memory_pb2.Memory:
    memory = memory_pb2.Memory(
        text=f"[{day} May 2023] {speaker}: {text}",
        speaker=speaker,
        state=state,
        create_time=to_timestamp(T0 - dt.timedelta(seconds=age)),
        event_time=to_timestamp(dt.datetime(2023, 5, day, tzinfo=dt.UTC)),
    )
    memory.usage.access_count = accesses
    if idle is not None:
        memory.usage.last_access_time.CopyFrom(to_timestamp(T0 - dt.timedelta(seconds=idle)))
    return memory


def test_deleted_is_terminal_and_retired_memories_can_only_be_restored_or_deleted():
    assert states.TRANSITIONS[S.MEMORY_STATE_DELETED] == frozenset()
    for retired in (
        S.MEMORY_STATE_ARCHIVED,
        S.MEMORY_STATE_MERGED,
        S.MEMORY_STATE_SUPERSEDED,
        S.MEMORY_STATE_EXPIRED,
    ):
        assert states.is_legal(retired, S.MEMORY_STATE_ACTIVATED)
        assert states.is_legal(retired, S.MEMORY_STATE_DELETED)
        assert not states.is_legal(retired, S.MEMORY_STATE_GENERATED)
    assert not states.is_legal(S.MEMORY_STATE_ACTIVATED, S.MEMORY_STATE_GENERATED)
    assert not states.is_legal(S.MEMORY_STATE_MERGED, S.MEMORY_STATE_SUPERSEDED)
    assert states.LIVE == {S.MEMORY_STATE_GENERATED, S.MEMORY_STATE_ACTIVATED}
    assert states.event_kind_value(S.MEMORY_STATE_SUPERSEDED) == "memory.superseded"


def test_ttl_expires_a_live_memory_once_it_is_old_enough():
    policy = lifecycle_pb2.Policy(ttl=_duration(3600))
    assert due(_memory(age=3599), policy, NOW) is None
    decision = due(_memory(age=3600), policy, NOW)
    assert decision is not None and decision.target == S.MEMORY_STATE_EXPIRED and decision.rule == "ttl"
    assert due(_memory(age=7200, state=S.MEMORY_STATE_ARCHIVED), policy, NOW) is None


def test_importance_halves_every_half_life_and_grows_with_use():
    assert importance(_memory(age=0), NOW, 100) == pytest.approx(1.0)
    assert importance(_memory(age=100), NOW, 100) == pytest.approx(0.5)
    assert importance(_memory(age=1000, accesses=3, idle=200), NOW, 100) == pytest.approx(1.0)


def test_decay_archives_unused_memories_and_spares_used_ones():
    policy = lifecycle_pb2.Policy(decay_half_life=_duration(100), archive_threshold=0.3)
    decision = due(_memory(age=200), policy, NOW)  # 0.25
    assert decision is not None and decision.target == S.MEMORY_STATE_ARCHIVED and decision.rule == "decay"
    assert decision.score == pytest.approx(0.25)
    assert due(_memory(age=200, accesses=1, idle=100), policy, NOW) is None  # 2 * 0.5 = 1.0


def test_promotion_activates_generated_memories_used_often_enough():
    policy = lifecycle_pb2.Policy(promote_access_count=3)
    assert due(_memory(accesses=2, idle=0), policy, NOW) is None
    decision = due(_memory(accesses=3, idle=0), policy, NOW)
    assert decision is not None and decision.target == S.MEMORY_STATE_ACTIVATED
    assert due(_memory(accesses=9, idle=0, state=S.MEMORY_STATE_ACTIVATED), policy, NOW) is None
    assert due(_memory(accesses=9), lifecycle_pb2.Policy(), NOW) is None  # 0: never


def test_policies_are_checked():
    policies.check(
        lifecycle_pb2.Policy(ttl=_duration(60), decay_half_life=_duration(60), archive_threshold=0.2)
    )
    for bad in (
        lifecycle_pb2.Policy(ttl=_duration(0.5)),
        lifecycle_pb2.Policy(archive_threshold=0.2),  # no half-life to decay with
        lifecycle_pb2.Policy(archive_threshold=-1, decay_half_life=_duration(60)),
        lifecycle_pb2.Policy(promote_access_count=-1),
    ):
        with pytest.raises(InvalidArgument):
            policies.check(bad)
    assert policies.cube_of("cubes/demo/policy") == "demo"
    with pytest.raises(InvalidArgument):
        policies.cube_of("cubes/demo/memories/x")


def _judge(earlier: str, later: str, similarity: float):
    return judge(
        _memory(earlier, day=1),
        _memory(later, day=9),
        similarity,
        duplicate_similarity=0.92,
        conflict_similarity=0.75,
    )


def test_a_later_statement_of_change_on_the_same_topic_is_a_contradiction():
    verdict = _judge("My favorite color is blue.", "My favorite color is green now.", 0.89)
    assert verdict is not None and verdict.rule == "contradiction"
    verdict = _judge("I like jazz.", "I don't like jazz.", 0.92)
    assert verdict is not None and verdict.rule == "contradiction"
    verdict = _judge("I play tennis every week.", "I no longer play tennis.", 0.85)
    assert verdict is not None and verdict.rule == "contradiction"


def test_restatements_are_duplicates_and_related_statements_are_left_alone():
    verdict = _judge("I adopted a puppy named Max.", "I adopted a puppy named Max!", 0.99)
    assert verdict is not None and verdict.rule == "duplicate"
    assert _judge("I went hiking with my kids.", "We are going camping next month.", 0.81) is None
    assert _judge("I have a dog named Max.", "My sister has a dog named Rex.", 0.80) is None
    # a change cue on another topic, or too far apart, changes nothing
    assert _judge("I love painting sunsets.", "I quit my job at the bank.", 0.78) is None
    assert _judge("My favorite color is blue.", "My favorite color is green now.", 0.6) is None
    # the same words far apart in meaning (a short reply on another day): no neighbour to judge
    assert _judge("Yes, I did!", "Yes, I did!", 0.6) is None
    verdict = _judge("Yes, I did!", "Yes, I did!", 0.8)
    assert verdict is not None and verdict.reason == "the same words"
