"""Per-cube access: the rule each RPC follows, who holds which role on which cube, and the check.

Every RPC of every service has a ``Rule`` (a service that leaves one out does not start): the role
it needs on the cube its request names, or admin, or nothing. Roles live in the MEMOS_ACL bucket,
one ``CubeAcl`` per cube; each service mirrors the bucket through a watch, so a check costs no
round trip and a grant or revocation is seen everywhere within a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from memos.governance.v1 import governance_pb2
from memos_sdk.wire import Bucket

from . import operations, validation
from .auth import Caller
from .buckets import open_bucket
from .kvmirror import KvMirror

log = logging.getLogger(__name__)

READER = governance_pb2.CUBE_ROLE_READER
WRITER = governance_pb2.CUBE_ROLE_WRITER
OWNER = governance_pb2.CUBE_ROLE_OWNER
ROLE_NAMES = {READER: "READER", WRITER: "WRITER", OWNER: "OWNER"}

Extract = Callable[[Any], str]


@dataclass(frozen=True)
class Rule:
    """What one RPC needs. With ``cube``: ``role`` on the cube it extracts from the request (which
    also validates it). With ``admin``: an admin caller. ``public``: no token at all. Neither:
    any authenticated caller, and the handler decides (it sees the caller)."""

    role: int = 0
    cube: Extract | None = None
    resource: Extract | None = None
    admin: bool = False
    public: bool = False
    # A write to a cube nobody owns makes the caller its owner.
    claims: bool = False


def reads(cube: Extract, resource: Extract | None = None) -> Rule:
    return Rule(READER, cube, resource)


def writes(cube: Extract, resource: Extract | None = None, *, claims: bool = False) -> Rule:
    return Rule(WRITER, cube, resource, claims=claims)


def owns(cube: Extract, resource: Extract | None = None, *, claims: bool = False) -> Rule:
    return Rule(OWNER, cube, resource, claims=claims)


ADMIN = Rule(admin=True)
PUBLIC = Rule(public=True)
SIGNED_IN = Rule()


def _field(message: Any, path: str) -> Any:
    for part in path.split("."):
        message = getattr(message, part)
    return message


def cube_id_at(path: str = "cube_id") -> Extract:
    return lambda request: validation.cube_id(_field(request, path), path)


def cube_id_or_all_at(path: str = "cube_id") -> Extract:
    """The cube named at ``path``, or "" (every cube, which only an admin may ask for) when unset."""
    return lambda request: validation.cube_id(value, path) if (value := _field(request, path)) else ""


def memory_cube_at(path: str = "name") -> Extract:
    return lambda request: validation.memory_name(_field(request, path), path)[0]


def operation_cube_at(path: str = "name") -> Extract:
    return lambda request: operations.parse_name(_field(request, path))[0]


def field_at(path: str) -> Extract:
    return lambda request: str(_field(request, path))


# -- who holds what -------------------------------------------------------------------------


def held_role(acl: governance_pb2.CubeAcl | None, principal: str) -> int:
    if acl is None:
        return 0
    if acl.owner == principal:
        return OWNER
    return max((g.role for g in acl.grants if g.principal == principal), default=0)


def decide(caller: Caller, acl: governance_pb2.CubeAcl | None, role: int) -> tuple[bool, str]:
    """(allowed, reason) for ``caller`` needing ``role`` on a cube with ``acl``."""
    if caller.admin:
        return True, "ADMIN"
    if caller.is_service:
        return True, "SERVICE"
    held = held_role(acl, caller.principal)
    if not held:
        return False, "NO_GRANT"
    if held < role:
        return False, "ROLE_TOO_LOW"
    return True, ROLE_NAMES[held]


async def open_acl_bucket(js: JetStreamContext) -> KeyValue:
    return await open_bucket(js, Bucket.ACL)


class AclMirror:
    """The MEMOS_ACL bucket in memory (a KvMirror), and the two ways it changes."""

    def __init__(self, bucket: KeyValue) -> None:
        self.bucket = bucket
        self._mirror = KvMirror(bucket)
        self.run = self._mirror.run
        self.start = self._mirror.start

    def get(self, cube_id: str) -> governance_pb2.CubeAcl | None:
        value = self._mirror.get(cube_id)
        return governance_pb2.CubeAcl.FromString(value) if value else None

    def _apply(self, cube_id: str, value: bytes, revision: int) -> None:
        self._mirror.apply(cube_id, value, revision)

    async def claim(self, cube_id: str, principal: str) -> governance_pb2.CubeAcl:
        """Make ``principal`` the owner of a cube nobody owns; answers the cube's ACL either way."""
        acl = governance_pb2.CubeAcl(cube_id=cube_id, owner=principal)
        try:
            revision = await self.bucket.create(cube_id, acl.SerializeToString())
            log.info("%s claimed cube %s", principal, cube_id)
        except KeyWrongLastSequenceError:  # someone else owns it already
            entry = await self.bucket.get(cube_id)
            acl, revision = governance_pb2.CubeAcl.FromString(entry.value), entry.revision
        self._apply(cube_id, acl.SerializeToString(), revision)
        return acl

    async def update(
        self, cube_id: str, change: Callable[[governance_pb2.CubeAcl | None], governance_pb2.CubeAcl]
    ) -> governance_pb2.CubeAcl:
        """Read-modify-write with compare-and-swap, retried when another writer got in between."""
        while True:
            try:
                entry = await self.bucket.get(cube_id)
                current, revision = governance_pb2.CubeAcl.FromString(entry.value), entry.revision
            except KeyNotFoundError:
                current, revision = None, 0
            new = change(current)
            try:
                if revision:
                    revision = await self.bucket.update(cube_id, new.SerializeToString(), last=revision)
                else:
                    revision = await self.bucket.create(cube_id, new.SerializeToString())
            except KeyWrongLastSequenceError:
                continue
            self._apply(cube_id, new.SerializeToString(), revision)
            return new


class RateLimiter:
    """A token bucket per principal: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, *, max_principals: int = 10_000) -> None:
        self._rate, self._burst, self._max = rate, float(burst), max_principals
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, principal: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(principal, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if len(self._buckets) >= self._max and principal not in self._buckets:
            self._forget_full(now)
        if tokens < 1:
            self._buckets[principal] = (tokens, now)
            return False
        self._buckets[principal] = (tokens - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop principals whose bucket has refilled: forgetting them changes nothing."""
        full = [p for p, (t, last) in self._buckets.items() if t + (now - last) * self._rate >= self._burst]
        for principal in full:
            del self._buckets[principal]
