"""The gate every RPC passes: who is calling (token), how often (rate), may they (cube role), and
the audit record of the decision."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from opentelemetry import trace

from memos.governance.v1 import governance_pb2

from .access import WRITER, AclMirror, RateLimiter, Rule, decide, open_acl_bucket
from .audit import AuditTrail
from .auth import RELAY_HEADER, Caller, OutgoingToken, TokenVerifier
from .bus import open_jetstream
from .errors import PermissionDenied, ResourceExhausted, Unauthenticated
from .settings import ServiceSettings
from .tasks import run_until_closed

log = logging.getLogger(__name__)

_VERBS = {1: "read", 2: "write to", 3: "manage"}


class Guard:
    def __init__(
        self, verifier: TokenVerifier, acl: AclMirror, audit: AuditTrail, limiter: RateLimiter
    ) -> None:
        self.verifier = verifier
        self.acl = acl
        self.audit = audit
        self.limiter = limiter

    @classmethod
    async def open(cls, stack: AsyncExitStack, settings: ServiceSettings, service: str) -> Guard:
        if settings.auth_public_key_file is None:
            raise ValueError(
                "auth_public_key_file is not set: every service verifies tokens with governance's "
                "public key (MEMOS_<SERVICE>_AUTH_PUBLIC_KEY_FILE; `make run` creates one)"
            )
        verifier = TokenVerifier.from_file(settings.auth_public_key_file)
        js = await open_jetstream(stack, settings.nats_url, f"{service}-guard")
        acl = AclMirror(await open_acl_bucket(js))
        guard = cls(
            verifier,
            acl,
            AuditTrail(js, service, linger_seconds=settings.audit_linger_seconds),
            RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
        )
        await acl.start(stack)
        run_until_closed(stack, guard.audit.run, f"{service}:audit")
        stack.push_async_callback(guard.audit.flush)  # runs first: the stack unwinds in reverse
        return guard

    async def admit(
        self, method: str, rule: Rule, request: Any, metadata: Mapping[str, str]
    ) -> Caller | None:
        """The verified caller, or an exception (UNAUTHENTICATED, RESOURCE_EXHAUSTED,
        INVALID_ARGUMENT from the request's cube, PERMISSION_DENIED)."""
        if rule.public:
            return None
        record = governance_pb2.AuditRecord(action=method, trace_id=_trace_id())
        try:
            caller = self.verifier.verify(metadata.get("authorization"))
            record.principal = caller.principal
            relayed = self._relayed(metadata.get(RELAY_HEADER))
        except Unauthenticated as err:
            await self._deny(record, err.reason)
            raise
        if not (caller.is_service or relayed) and not self.limiter.allow(caller.principal):
            await self._deny(record, "RATE_LIMITED")
            raise ResourceExhausted(
                f"{caller.principal} sends more than its rate limit allows; slow down",
                reason="RATE_LIMITED",
            )
        if rule.cube is not None:
            record.cube_id = rule.cube(request)
        if rule.resource is not None:
            record.resource = rule.resource(request)
        allowed, reason = await self._decide(caller, rule, record.cube_id)
        if not allowed:
            await self._deny(record, reason)
            if reason == "NOT_ADMIN":
                raise PermissionDenied(f"{caller.principal} is not an admin", reason=reason)
            raise PermissionDenied(
                f"{caller.principal} may not {_VERBS[rule.role]} cube {record.cube_id}",
                reason=reason,
                cube_id=record.cube_id,
            )
        record.allowed, record.reason = True, reason
        changes = rule.admin or rule.role >= WRITER
        # A service's own reads are plumbing, and a relayed read was recorded where it came in.
        if changes or not (caller.is_service or relayed):
            await self.audit.record(record, wait=changes)
        return caller

    def _relayed(self, authorization: str | None) -> bool:
        """Whether a service relays the call (RELAY_HEADER holds a service's valid token).
        UNAUTHENTICATED when the header holds anything else: nobody else may claim it."""
        if authorization is None:
            return False
        if not self.verifier.verify(authorization).is_service:
            raise Unauthenticated(f"{RELAY_HEADER} must hold a service's token", reason="RELAY_NOT_A_SERVICE")
        return True

    async def _decide(self, caller: Caller, rule: Rule, cube_id: str) -> tuple[bool, str]:
        if rule.admin or (rule.cube is not None and not cube_id):  # no cube named: all of them
            return (True, "ADMIN") if caller.admin else (False, "NOT_ADMIN")
        if rule.cube is None:
            return True, "SIGNED_IN"
        acl = self.acl.get(cube_id)
        if acl is None and rule.claims and not caller.is_service:
            acl = await self.acl.claim(cube_id, caller.principal)
        return decide(caller, acl, rule.role)

    async def _deny(self, record: governance_pb2.AuditRecord, reason: str) -> None:
        record.allowed, record.reason = False, reason
        await self.audit.record(record, wait=True)


def _trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.trace_id else ""


def outgoing_token(settings: ServiceSettings) -> OutgoingToken:
    """What a service's calls to its peers carry (see OutgoingToken)."""
    from memos_sdk.auth import TokenSource

    key = settings.service_api_key.get_secret_value()
    return OutgoingToken(TokenSource(settings.governance_addr, key, tls=settings.tls()) if key else None)
