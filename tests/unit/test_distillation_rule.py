"""When the policy's distillation rule is due."""

from __future__ import annotations

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from services.lifecycle.rules import distillation_due, distillation_request_id

NAMES = [f"cubes/c/memories/{i:032x}" for i in range(3)]


def _adapter(*learned: str) -> memory_pb2.Memory:
    return memory_pb2.Memory(lineage=memory_pb2.Lineage(parent_names=list(learned)))


def test_below_the_count_or_without_a_rule_nothing_is_due():
    assert distillation_due(NAMES, [], lifecycle_pb2.Policy(distill_activated_count=4)) == []
    assert distillation_due(NAMES, [], lifecycle_pb2.Policy()) == []


def test_at_the_count_the_activated_memories_are_due_unless_an_adapter_learned_them_all():
    policy = lifecycle_pb2.Policy(distill_activated_count=3)
    assert distillation_due(list(reversed(NAMES)), [], policy) == NAMES
    assert distillation_due(NAMES, [_adapter(*NAMES[:2])], policy) == NAMES  # one is new
    assert distillation_due(NAMES, [_adapter(*NAMES, "cubes/c/memories/" + "f" * 32)], policy) == []


def test_the_request_id_names_the_set_whatever_its_order():
    assert distillation_request_id(NAMES) == distillation_request_id(list(reversed(NAMES)))
    assert distillation_request_id(NAMES) != distillation_request_id(NAMES[:2])
    assert len(distillation_request_id(NAMES)) <= 128
