"""Cube policies in the MEMOS_POLICIES key-value bucket, so every lifecycle replica reads the same.

Read from an in-memory mirror of the bucket: the conflict check asks for the policy of every new
memory."""

from __future__ import annotations

from contextlib import AsyncExitStack

from nats.js import JetStreamContext

from memos.lifecycle.v1 import lifecycle_pb2
from memos_sdk.wire import Bucket
from services.common import validation
from services.common.buckets import open_bucket
from services.common.clock import now_timestamp
from services.common.errors import InvalidArgument
from services.common.kvmirror import KvMirror

MIN_DURATION_SECONDS = 1.0
MAX_REDACTED_NAMES = 100


def policy_name(cube_id: str) -> str:
    return f"cubes/{cube_id}/policy"


def cube_of(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "cubes" or parts[2] != "policy":
        raise InvalidArgument(
            f"{name[:120]!r} is not cubes/{{cube}}/policy", reason="MALFORMED_NAME", field="name"
        )
    return validation.cube_id(parts[1], "name")


def check(policy: lifecycle_pb2.Policy) -> None:
    for field in ("ttl", "decay_half_life"):
        if policy.HasField(field):
            seconds = getattr(policy, field).ToTimedelta().total_seconds()
            if seconds < MIN_DURATION_SECONDS:
                raise InvalidArgument(
                    f"{field} must be at least {MIN_DURATION_SECONDS:g}s, or unset",
                    reason="INVALID_POLICY",
                    field=field,
                )
    if not 0 <= policy.archive_threshold:
        raise InvalidArgument("archive_threshold must not be negative", reason="INVALID_POLICY")
    if policy.archive_threshold and not policy.HasField("decay_half_life"):
        raise InvalidArgument(
            "archive_threshold needs a decay_half_life", reason="INVALID_POLICY", field="archive_threshold"
        )
    if policy.promote_access_count < 0:
        raise InvalidArgument("promote_access_count must not be negative", reason="INVALID_POLICY")
    if policy.distill_activated_count < 0:
        raise InvalidArgument("distill_activated_count must not be negative", reason="INVALID_POLICY")
    names = policy.redaction.names
    if len(names) > MAX_REDACTED_NAMES or any(not n.strip() or len(n) > 100 for n in names):
        raise InvalidArgument(
            f"redaction.names: at most {MAX_REDACTED_NAMES} names of 1-100 characters",
            reason="INVALID_POLICY",
            field="redaction.names",
        )
    if any(k not in lifecycle_pb2.PiiKind.values() or k == 0 for k in policy.redaction.kinds):
        raise InvalidArgument("redaction.kinds names an unknown kind", reason="INVALID_POLICY")


class Policies:
    def __init__(self, mirror: KvMirror, *, default_resolve_conflicts: bool) -> None:
        self._mirror = mirror
        self._default_resolve_conflicts = default_resolve_conflicts

    @classmethod
    async def open(
        cls, stack: AsyncExitStack, js: JetStreamContext, *, default_resolve_conflicts: bool
    ) -> Policies:
        mirror = KvMirror(await open_bucket(js, Bucket.POLICIES))
        await mirror.start(stack)
        return cls(mirror, default_resolve_conflicts=default_resolve_conflicts)

    async def get(self, cube_id: str) -> lifecycle_pb2.Policy:
        """The cube's policy, or the default one (no TTL, no decay) when none was set."""
        value = self._mirror.get(cube_id)
        if not value:
            return lifecycle_pb2.Policy(
                name=policy_name(cube_id), resolve_conflicts=self._default_resolve_conflicts
            )
        return lifecycle_pb2.Policy.FromString(value)

    async def set(self, policy: lifecycle_pb2.Policy) -> lifecycle_pb2.Policy:
        cube_id = cube_of(policy.name)
        check(policy)
        stored = lifecycle_pb2.Policy()
        stored.CopyFrom(policy)
        stored.update_time.CopyFrom(now_timestamp())
        value = stored.SerializeToString()
        revision = await self._mirror.bucket.put(cube_id, value)
        self._mirror.apply(cube_id, value, revision)  # read back at once, ahead of the watch
        return stored

    async def cubes(self) -> list[str]:
        """Cubes that have a policy of their own."""
        return sorted(self._mirror.keys())
