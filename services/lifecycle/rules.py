"""The lifecycle's scheduled rules, as pure functions of a memory, its cube's policy and the time.

Importance = (1 + access_count) * 0.5 ^ (idle time / half-life), where idle time runs from the
last access (or from creation): each use adds weight, and it halves every half-life unused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from services.common import states

S = memory_pb2.MemoryState


@dataclass(frozen=True, slots=True)
class Decision:
    target: int
    rule: str
    score: float
    reason: str


def importance(memory: memory_pb2.Memory, now_seconds: float, half_life_seconds: float) -> float:
    usage = memory.usage
    since = usage.last_access_time if usage.HasField("last_access_time") else memory.create_time
    idle = max(0.0, now_seconds - since.ToNanoseconds() / 1e9)
    return (1 + usage.access_count) * 0.5 ** (idle / half_life_seconds)


def due(memory: memory_pb2.Memory, policy: lifecycle_pb2.Policy, now_seconds: float) -> Decision | None:
    """The move a live memory is due for under ``policy``, if any: expiry, then archiving, then promotion."""
    if memory.state not in states.LIVE:
        return None
    age = now_seconds - memory.create_time.ToNanoseconds() / 1e9
    ttl = policy.ttl.ToTimedelta().total_seconds()
    if ttl > 0 and age >= ttl:
        return Decision(S.MEMORY_STATE_EXPIRED, "ttl", age, f"{age:.0f}s old; the cube's TTL is {ttl:.0f}s")
    half_life = policy.decay_half_life.ToTimedelta().total_seconds()
    if half_life > 0 and policy.archive_threshold > 0:
        score = importance(memory, now_seconds, half_life)
        if score < policy.archive_threshold:
            return Decision(
                S.MEMORY_STATE_ARCHIVED,
                "decay",
                score,
                f"importance {score:.3g} fell below the cube's threshold {policy.archive_threshold:g}",
            )
    count = memory.usage.access_count
    if memory.state == S.MEMORY_STATE_GENERATED and 0 < policy.promote_access_count <= count:
        return Decision(
            S.MEMORY_STATE_ACTIVATED,
            "promotion",
            float(count),
            f"used {count} times; the cube promotes at {policy.promote_access_count}",
        )
    return None


def distillation_due(
    activated: list[str], adapters: list[memory_pb2.Memory], policy: lifecycle_pb2.Policy
) -> list[str]:
    """The activated memories to distil under ``policy`` (none when below its count, or when a
    live adapter has learned every one of them already)."""
    wanted = sorted(set(activated))
    if not 0 < policy.distill_activated_count <= len(wanted):
        return []
    if any(set(wanted) <= set(a.lineage.parent_names) for a in adapters):
        return []
    return wanted


def distillation_request_id(names: list[str]) -> str:
    """One request id per set of sources: a sweep that finds the same set again queues nothing."""
    return "policy-" + hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:32]
