"""Cube policies in the MEMOS_POLICIES key-value bucket, so every lifecycle replica reads the same."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from memos.lifecycle.v1 import lifecycle_pb2
from memos_sdk.wire import Bucket
from services.common import validation
from services.common.buckets import open_bucket
from services.common.clock import now_timestamp
from services.common.errors import InvalidArgument

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
    def __init__(self, bucket: KeyValue, *, default_resolve_conflicts: bool) -> None:
        self._bucket = bucket
        self._default_resolve_conflicts = default_resolve_conflicts

    @classmethod
    async def open(cls, js: JetStreamContext, *, default_resolve_conflicts: bool) -> Policies:
        bucket = await open_bucket(js, Bucket.POLICIES)
        return cls(bucket, default_resolve_conflicts=default_resolve_conflicts)

    async def get(self, cube_id: str) -> lifecycle_pb2.Policy:
        """The cube's policy, or the default one (no TTL, no decay) when none was set."""
        try:
            entry = await self._bucket.get(cube_id)
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            return lifecycle_pb2.Policy(
                name=policy_name(cube_id), resolve_conflicts=self._default_resolve_conflicts
            )
        return lifecycle_pb2.Policy.FromString(entry.value)

    async def set(self, policy: lifecycle_pb2.Policy) -> lifecycle_pb2.Policy:
        cube_id = cube_of(policy.name)
        check(policy)
        stored = lifecycle_pb2.Policy()
        stored.CopyFrom(policy)
        stored.update_time.CopyFrom(now_timestamp())
        await self._bucket.put(cube_id, stored.SerializeToString())
        return stored

    async def cubes(self) -> list[str]:
        """Cubes that have a policy of their own."""
        try:
            return sorted(await self._bucket.keys())
        except NoKeysError:
            return []
