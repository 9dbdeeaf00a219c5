"""GovernanceService: principals and API keys, tokens, per-cube access, and the audit log."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from memos.governance.v1 import governance_pb2, governance_pb2_grpc
from memos.lifecycle.v1 import lifecycle_pb2_grpc
from memos.vault.v1 import vault_pb2_grpc
from services.common import validation
from services.common.access import (
    ADMIN,
    OWNER,
    PUBLIC,
    ROLE_NAMES,
    SIGNED_IN,
    AclMirror,
    Rule,
    cube_id_at,
    cube_id_or_all_at,
    field_at,
    held_role,
    open_acl_bucket,
    owns,
)
from services.common.audit import AuditTrail
from services.common.auth import TokenSigner, current_caller, load_private_key
from services.common.blobs import open_blob_store
from services.common.bus import open_jetstream
from services.common.clients import open_channel
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.common.grpc_host import Component, Registration
from services.common.sealing import SubjectKeys

from .chain import AuditChain
from .erasure import Eraser
from .principals import Principals, principal_id
from .settings import GovernanceSettings

log = logging.getLogger(__name__)

ACCESS = {
    "CreatePrincipal": Rule(admin=True, resource=field_at("principal.name")),
    "IssueToken": PUBLIC,
    # An owner shares its cube; sharing a cube nobody owns yet makes the caller its owner.
    "SetCubeAccess": owns(cube_id_at("access.cube_id"), field_at("access.principal"), claims=True),
    "ListCubeAccess": owns(cube_id_at()),
    "CheckAccess": SIGNED_IN,
    "ListAudit": owns(cube_id_or_all_at()),  # a cube's owner reads its records; admins read all
    "EraseSubject": ADMIN,
}
ROLES = set(ROLE_NAMES)


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    def __init__(
        self,
        settings: GovernanceSettings,
        principals: Principals,
        signer: TokenSigner,
        acl: AclMirror,
        chain: AuditChain,
        audit: AuditTrail,
        eraser: Eraser,
    ) -> None:
        self._eraser = eraser
        self._settings = settings
        self._principals = principals
        self._signer = signer
        self._acl = acl
        self._chain = chain
        self._audit = audit

    async def CreatePrincipal(self, request, context):
        principal, api_key = await self._principals.create(
            request.principal, validation.request_id(request.request_id)
        )
        return governance_pb2.CreatePrincipalResponse(principal=principal, api_key=api_key)

    async def IssueToken(self, request, context):
        record = governance_pb2.AuditRecord(action="/memos.governance.v1.GovernanceService/IssueToken")
        try:
            principal = await self._principals.authenticate(request.api_key)
        except (InvalidArgument, Unauthenticated) as err:
            record.reason = err.reason
            await self._audit.record(record, wait=True)
            raise
        token, expires = self._signer.issue(principal)
        record.principal, record.allowed, record.reason = principal.name, True, "API_KEY"
        await self._audit.record(record, wait=principal.kind != governance_pb2.PRINCIPAL_KIND_SERVICE)
        response = governance_pb2.IssueTokenResponse(token=token)
        response.expire_time.seconds = expires
        return response

    async def SetCubeAccess(self, request, context):
        access = request.access
        cube_id = validation.cube_id(access.cube_id, "access.cube_id")
        principal_id(access.principal, "access.principal")
        if access.role == OWNER:
            raise InvalidArgument("a cube has one owner; grant READER or WRITER", reason="INVALID_ROLE")
        if access.role and access.role not in ROLES:
            raise InvalidArgument(f"unknown role {access.role}", reason="INVALID_ROLE")
        if access.role:
            await self._principals.get(access.principal)  # NOT_FOUND for a principal that does not exist

        def change(acl: governance_pb2.CubeAcl | None) -> governance_pb2.CubeAcl:
            assert acl is not None  # the guard claimed the cube before this ran
            if acl.owner == access.principal:
                raise InvalidArgument("the owner's role cannot change", reason="OWNER_ROLE_FIXED")
            new = governance_pb2.CubeAcl(cube_id=cube_id, owner=acl.owner)
            new.grants.extend(g for g in acl.grants if g.principal != access.principal)
            if access.role:
                new.grants.append(
                    governance_pb2.CubeAccess(cube_id=cube_id, principal=access.principal, role=access.role)
                )
            return new

        await self._acl.update(cube_id, change)
        verb = f"granted {ROLE_NAMES[access.role]}" if access.role else "revoked"
        log.info("%s on cube %s: %s", verb, cube_id, access.principal)
        return governance_pb2.CubeAccess(cube_id=cube_id, principal=access.principal, role=access.role)

    async def ListCubeAccess(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        acl = self._acl.get(cube_id)
        if acl is None:
            return governance_pb2.ListCubeAccessResponse()
        owner = governance_pb2.CubeAccess(cube_id=cube_id, principal=acl.owner, role=OWNER)
        return governance_pb2.ListCubeAccessResponse(grants=[owner, *acl.grants])

    async def CheckAccess(self, request, context):
        caller = current_caller.get()
        cube_id = validation.cube_id(request.cube_id)
        principal = request.principal or caller.principal
        principal_id(principal, "principal")
        if principal != caller.principal and not caller.admin:
            raise PermissionDenied("only admins may check another principal's access", reason="NOT_ADMIN")
        role = request.role or governance_pb2.CUBE_ROLE_READER
        if role not in ROLES:
            raise InvalidArgument(f"unknown role {role}", reason="INVALID_ROLE")
        stored = await self._principals.find(principal)
        is_admin = stored is not None and stored.principal.admin
        held = OWNER if is_admin else held_role(self._acl.get(cube_id), principal)
        return governance_pb2.CheckAccessResponse(allowed=held >= role, role=held)

    async def ListAudit(self, request, context):
        cube_id = request.cube_id
        size = validation.page_size(request.page_size, default=100, maximum=self._settings.audit_page_max)
        try:
            start = int(request.page_token or 1)
        except ValueError:
            raise InvalidArgument("page_token is malformed", reason="INVALID_PAGE_TOKEN") from None
        records, scanned, next_start, full = [], 0, start, False
        async for record in self._chain.read(start, cube_id=cube_id, limit=self._settings.audit_scan_max):
            scanned, next_start = scanned + 1, record.sequence + 1
            if request.principal and record.principal != request.principal:
                continue
            if request.denied_only and record.allowed:
                continue
            records.append(record)
            if len(records) == size:
                full = True
                break
        more = full or scanned == self._settings.audit_scan_max
        return governance_pb2.ListAuditResponse(
            records=records, next_page_token=str(next_start) if more else ""
        )

    async def EraseSubject(self, request, context):
        validation.request_id(request.request_id)
        if not request.subject_id:
            raise InvalidArgument("subject_id is required", reason="MISSING_FIELD", field="subject_id")
        return await self._eraser.erase(request.subject_id)


async def setup(stack: AsyncExitStack, settings: GovernanceSettings) -> Component:
    if settings.signing_key_file is None:
        raise ValueError(
            "signing_key_file is not set (MEMOS_GOVERNANCE_SIGNING_KEY_FILE; `make run` creates one)"
        )
    signer = TokenSigner(load_private_key(settings.signing_key_file), settings.token_ttl_seconds)
    js = await open_jetstream(stack, settings.nats_url, "governance")
    principals = await Principals.open(js)
    bootstrap = (
        (settings.bootstrap_admin_key, "principals/admin", governance_pb2.PRINCIPAL_KIND_USER, True),
        (settings.bootstrap_service_key, "principals/mesh", governance_pb2.PRINCIPAL_KIND_SERVICE, False),
    )
    for key, name, kind, admin in bootstrap:
        if key.get_secret_value():
            await principals.ensure(
                governance_pb2.Principal(name=name, kind=kind, admin=admin), key.get_secret_value()
            )
    acl = AclMirror(await open_acl_bucket(js))
    await acl.start(stack)
    keys = await SubjectKeys.start(stack, js)
    vault = await stack.enter_async_context(open_channel(settings.vault_addr, settings))
    lifecycle = await stack.enter_async_context(open_channel(settings.lifecycle_addr, settings))
    eraser = Eraser(
        js,
        keys,
        vault_pb2_grpc.VaultServiceStub(vault),
        lifecycle_pb2_grpc.LifecycleServiceStub(lifecycle),
        open_blob_store(settings),
        call_seconds=settings.call_timeout_seconds,
        wait_applied_seconds=settings.wait_applied_timeout_seconds,
    )
    chain = AuditChain(js)
    chainer = await chain.worker()
    audit = AuditTrail(js, "governance", linger_seconds=settings.audit_linger_seconds)

    async def stop() -> None:
        await audit.flush()
        await chainer.stop()

    servicer = GovernanceServicer(settings, principals, signer, acl, chain, audit, eraser)
    add = governance_pb2_grpc.add_GovernanceServiceServicer_to_server
    return Component(
        registrations=[
            Registration.of(governance_pb2.DESCRIPTOR, "GovernanceService", add, servicer, ACCESS)
        ],
        background=[chainer.run, audit.run],
        on_stop=stop,
    )
