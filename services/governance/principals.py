"""Principals and their API keys in the MEMOS_PRINCIPALS bucket; keys only as hashes."""

from __future__ import annotations

import logging
import re

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from memos.governance.v1 import governance_pb2
from memos_sdk.wire import Bucket
from services.common.auth import hash_secret, new_api_key, secret_matches, split_api_key
from services.common.buckets import open_bucket
from services.common.clock import now_timestamp
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

log = logging.getLogger(__name__)

NAME = re.compile(r"^principals/(?P<id>[a-z0-9][a-z0-9_-]{0,62})$")
KINDS = {
    governance_pb2.PRINCIPAL_KIND_USER,
    governance_pb2.PRINCIPAL_KIND_AGENT,
    governance_pb2.PRINCIPAL_KIND_SERVICE,
}


def principal_id(name: str, field: str = "principal.name") -> str:
    match = NAME.match(name)
    if not match:
        raise InvalidArgument(
            f"{field} {name[:80]!r} is malformed: principals/ and 1-63 lower-case letters, digits, '-' or '_'",
            reason="MALFORMED_PRINCIPAL",
            field=field,
        )
    return match["id"]


class Principals:
    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext) -> Principals:
        return cls(await open_bucket(js, Bucket.PRINCIPALS))

    async def find(self, name: str) -> governance_pb2.StoredPrincipal | None:
        try:
            entry = await self._bucket.get(f"p.{principal_id(name)}")
        except KeyNotFoundError:
            return None
        return governance_pb2.StoredPrincipal.FromString(entry.value) if entry.value else None

    async def get(self, name: str) -> governance_pb2.Principal:
        stored = await self.find(name)
        if stored is None:
            raise NotFound(f"{name} does not exist", reason="PRINCIPAL_NOT_FOUND", principal=name)
        return stored.principal

    async def create(
        self, principal: governance_pb2.Principal, request_id: str
    ) -> tuple[governance_pb2.Principal, str]:
        """The new principal and its API key. A retry of the same request (same request_id) gets
        the principal with a fresh key, and the key of the first attempt stops working."""
        pid = principal_id(principal.name)
        if principal.kind not in KINDS:
            raise InvalidArgument(
                "principal.kind is required", reason="MISSING_FIELD", field="principal.kind"
            )
        if len(principal.display_name) > 200:
            raise InvalidArgument("principal.display_name is over 200 characters", reason="FIELD_TOO_LONG")
        existing = await self.find(principal.name)
        if existing is not None and not (request_id and existing.request_id == request_id):
            raise AlreadyExists(
                f"{principal.name} exists", reason="PRINCIPAL_EXISTS", principal=principal.name
            )
        if existing is not None:
            principal = existing.principal
            for kid in existing.key_ids:
                await self._bucket.delete(f"k.{kid}")
        else:
            principal.create_time.CopyFrom(now_timestamp())
        kid, api_key = new_api_key()
        await self._put_key(kid, api_key, principal.name)
        stored = governance_pb2.StoredPrincipal(principal=principal, request_id=request_id, key_ids=[kid])
        try:
            if existing is None:
                await self._bucket.create(f"p.{pid}", stored.SerializeToString())
            else:
                await self._bucket.put(f"p.{pid}", stored.SerializeToString())
        except KeyWrongLastSequenceError:
            await self._bucket.delete(f"k.{kid}")
            raise AlreadyExists(f"{principal.name} exists", reason="PRINCIPAL_EXISTS") from None
        log.info("created %s", principal.name)
        return principal, api_key

    async def _put_key(self, kid: str, api_key: str, principal: str) -> None:
        _, secret = split_api_key(api_key)
        record = governance_pb2.ApiKeyRecord(
            principal=principal, secret_sha256=hash_secret(secret), create_time=now_timestamp()
        )
        await self._bucket.put(f"k.{kid}", record.SerializeToString())

    async def ensure(self, principal: governance_pb2.Principal, api_key: str) -> None:
        """Make sure a principal exists and ``api_key`` is one of its keys (bootstrap at start)."""
        kid, _ = split_api_key(api_key)
        stored = await self.find(principal.name)
        if stored is None:
            principal.create_time.CopyFrom(now_timestamp())
            stored = governance_pb2.StoredPrincipal(principal=principal)
        else:
            stored.principal.admin, stored.principal.kind = principal.admin, principal.kind
        if kid not in stored.key_ids:
            stored.key_ids.append(kid)
        await self._put_key(kid, api_key, principal.name)
        await self._bucket.put(f"p.{principal_id(principal.name)}", stored.SerializeToString())

    async def authenticate(self, api_key: str) -> governance_pb2.Principal:
        kid, secret = split_api_key(api_key)
        try:
            entry = await self._bucket.get(f"k.{kid}")
            record = governance_pb2.ApiKeyRecord.FromString(entry.value)
        except KeyNotFoundError:
            record = None
        if record is None or not secret_matches(secret, record.secret_sha256):
            raise Unauthenticated("the API key is not recognised", reason="API_KEY_INVALID")
        stored = await self.find(record.principal)
        if stored is None or kid not in stored.key_ids:
            raise Unauthenticated("the API key is not recognised", reason="API_KEY_INVALID")
        return stored.principal
