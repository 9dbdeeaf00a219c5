"""Async Python client of the mesh's gRPC API and its event stream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from memos.governance.v1 import governance_pb2, governance_pb2_grpc
from memos.lifecycle.v1 import lifecycle_pb2, lifecycle_pb2_grpc
from memos.reader.v1 import reader_pb2, reader_pb2_grpc
from memos.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc

from ._tracing import trace_interceptors
from .auth import TokenSource, auth_interceptors, find_api_key
from .channels import Tls, aio_channel
from .endpoints import Endpoints
from .errors import MemosAPIError
from .events import Event, decode_event
from .wire import events_subject

MessageLike = reader_pb2.Message | Mapping[str, Any]


def to_message(m: MessageLike) -> reader_pb2.Message:
    """A reader Message from a dict with keys id, speaker, text, time_text (or time), session_id, image_caption."""
    if isinstance(m, reader_pb2.Message):
        return m
    return reader_pb2.Message(
        id=str(m.get("id", "")),
        speaker=str(m.get("speaker", "")),
        text=str(m.get("text", "")),
        time_text=str(m.get("time_text", m.get("time", "")) or ""),
        session_id=str(m.get("session_id", "")),
        image_caption=str(m.get("image_caption", "") or ""),
    )


@contextlib.asynccontextmanager
async def _api_errors() -> AsyncIterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise MemosAPIError.from_rpc_error(err) from None


class MemosClient:
    """``async with MemosClient() as memos: await memos.search("demo", "where does alice live?")``.

    Calls carry a token: from ``token`` as given, or issued for ``api_key`` (default: found as
    memos_sdk.auth says, e.g. the key `make run` saved). ``tls`` (default: from MEMOS_TLS_*)
    speaks mutual TLS to a mesh that runs with it. Failures raise MemosAPIError with the
    status code and the server's reason.
    """

    def __init__(
        self,
        endpoints: Endpoints | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        tls: Tls | None = None,
        timeout_seconds: float = 60.0,
    ) -> None:
        self.endpoints = endpoints or Endpoints.from_env()
        self.timeout = timeout_seconds
        governance = self.endpoints.governance or Endpoints.local().governance
        key = api_key or (None if token else find_api_key(governance))
        tls = tls or Tls.from_env()
        self._tokens = TokenSource(governance, key, tls=tls) if key else None
        self._fixed_token = token
        interceptors = [*trace_interceptors(), *auth_interceptors(self._token)]
        addrs = [self.endpoints.reader, self.endpoints.vault, self.endpoints.scheduler]
        # Without a lifecycle address its calls go to the vault, which answers UNIMPLEMENTED.
        addrs.append(self.endpoints.lifecycle or self.endpoints.vault)
        addrs.append(governance)
        self._channels = [aio_channel(a, tls, interceptors) for a in addrs]
        self.reader = reader_pb2_grpc.ReaderServiceStub(self._channels[0])
        self.vault = vault_pb2_grpc.VaultServiceStub(self._channels[1])
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self._channels[2])
        self.lifecycle = lifecycle_pb2_grpc.LifecycleServiceStub(self._channels[3])
        self.governance = governance_pb2_grpc.GovernanceServiceStub(self._channels[4])

    async def _token(self) -> str | None:
        if self._fixed_token:
            return self._fixed_token
        return await self._tokens.token() if self._tokens is not None else None

    async def __aenter__(self) -> MemosClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        if self._tokens is not None:
            await self._tokens.close()

    # -- writes ---------------------------------------------------------------------------

    async def add_messages(
        self,
        cube_id: str,
        messages: Iterable[MessageLike],
        *,
        request_id: str = "",
        wait_applied: bool = False,
    ) -> reader_pb2.AddMessagesResponse:
        request = reader_pb2.AddMessagesRequest(
            cube_id=cube_id,
            messages=[to_message(m) for m in messages],
            request_id=request_id,
            wait_applied=wait_applied,
        )
        async with _api_errors():
            return await self.reader.AddMessages(request, timeout=self.timeout)

    async def add_document(
        self, cube_id: str, text: str, *, title: str = "", document_id: str = "", wait_applied: bool = False
    ) -> reader_pb2.AddDocumentResponse:
        request = reader_pb2.AddDocumentRequest(
            cube_id=cube_id, text=text, title=title, document_id=document_id, wait_applied=wait_applied
        )
        async with _api_errors():
            return await self.reader.AddDocument(request, timeout=self.timeout)

    async def update(
        self, name: str, *, text: str | None = None, tags: list[str] | None = None, expected_version: int = 0
    ) -> memory_pb2.Memory:
        memory = memory_pb2.Memory(name=name)
        paths = []
        if text is not None:
            memory.text = text
            paths.append("text")
        if tags is not None:
            memory.tags.extend(tags)
            paths.append("tags")
        request = vault_pb2.UpdateMemoryRequest(
            memory=memory,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            expected_version=expected_version,
        )
        async with _api_errors():
            return await self.vault.UpdateMemory(request, timeout=self.timeout)

    async def delete(self, name: str) -> vault_pb2.DeleteMemoryResponse:
        async with _api_errors():
            return await self.vault.DeleteMemory(
                vault_pb2.DeleteMemoryRequest(name=name), timeout=self.timeout
            )

    # -- reads ----------------------------------------------------------------------------

    async def search(
        self,
        cube_id: str,
        query: str,
        *,
        top_k: int = 10,
        token_budget: int = 0,
        states: Iterable[int] = (),
        reference_time: dt.datetime | None = None,
    ) -> scheduler_pb2.SearchResponse:
        """``states`` (MemoryState values) widens the search beyond the live memories;
        ``reference_time`` is when the question is asked (default: now), which times it names
        ("last week") are read against."""
        request = scheduler_pb2.SearchRequest(
            cube_id=cube_id,
            query=query,
            top_k=top_k,
            token_budget=token_budget,
            filter=vault_pb2.MemoryFilter(states=list(states)),
        )
        if reference_time is not None:
            request.reference_time.FromDatetime(reference_time)
        async with _api_errors():
            return await self.scheduler.Search(request, timeout=self.timeout)

    async def chat(
        self,
        cube_id: str,
        messages: Iterable[tuple[str, str] | scheduler_pb2.ChatMessage],
        *,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        activation_mode: int = scheduler_pb2.ACTIVATION_MODE_UNSPECIFIED,
        **options: Any,
    ) -> AsyncIterator[scheduler_pb2.ChatResponse]:
        """Stream a reply: responses with ``text_delta``, then one with ``report`` (memories used, tokens).

        ``messages`` are (role, content) pairs or ChatMessage; the last one is the user's.
        """
        request = scheduler_pb2.ChatRequest(
            cube_id=cube_id,
            messages=[
                m
                if isinstance(m, scheduler_pb2.ChatMessage)
                else scheduler_pb2.ChatMessage(role=m[0], content=m[1])
                for m in messages
            ],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            activation_mode=activation_mode,
            **options,
        )
        async with _api_errors():
            async for response in self.scheduler.Chat(request, timeout=self.timeout):
                yield response

    async def preload(self, cube_id: str, hint: str = "") -> scheduler_pb2.PreloadResponse:
        """Build the cube's activation memory (KV cache) now."""
        async with _api_errors():
            return await self.scheduler.Preload(
                scheduler_pb2.PreloadRequest(cube_id=cube_id, hint=hint), timeout=self.timeout
            )

    async def get(self, name: str) -> memory_pb2.Memory:
        async with _api_errors():
            return await self.vault.GetMemory(vault_pb2.GetMemoryRequest(name=name), timeout=self.timeout)

    async def list_page(
        self,
        cube_id: str,
        *,
        page_size: int = 100,
        page_token: str = "",
        speaker: str = "",
        states: Iterable[int] = (),
        kinds: Iterable[int] = (),
        derived_from: str = "",
    ) -> vault_pb2.ListMemoriesResponse:
        """One page of the cube's memories: the live plaintext ones, or those in ``states`` and
        ``kinds``; with ``derived_from`` (a memory name), only those derived from it (digests,
        merge survivors, adapters)."""
        request = vault_pb2.ListMemoriesRequest(
            cube_id=cube_id,
            page_size=page_size,
            page_token=page_token,
            filter=vault_pb2.MemoryFilter(
                speaker=speaker, states=list(states), kinds=list(kinds), parent_name=derived_from
            ),
        )
        async with _api_errors():
            return await self.vault.ListMemories(request, timeout=self.timeout)

    async def iter_memories(
        self,
        cube_id: str,
        *,
        page_size: int = 500,
        speaker: str = "",
        states: Iterable[int] = (),
        kinds: Iterable[int] = (),
        derived_from: str = "",
    ) -> AsyncIterator[memory_pb2.Memory]:
        token, states, kinds = "", list(states), list(kinds)
        while True:
            page = await self.list_page(
                cube_id,
                page_size=page_size,
                page_token=token,
                speaker=speaker,
                states=states,
                kinds=kinds,
                derived_from=derived_from,
            )
            for memory in page.memories:
                yield memory
            token = page.next_page_token
            if not token:
                return

    async def versions(self, name: str) -> list[memory_pb2.Memory]:
        out, token = [], ""
        while True:
            request = vault_pb2.ListVersionsRequest(name=name, page_size=100, page_token=token)
            async with _api_errors():
                page = await self.vault.ListVersions(request, timeout=self.timeout)
            out += page.versions
            token = page.next_page_token
            if not token:
                return out

    # -- life cycle -----------------------------------------------------------------------

    async def transition(
        self,
        name: str,
        state: int,
        *,
        reason: str = "",
        related_name: str = "",
        expected_version: int = 0,
        request_id: str = "",
    ) -> memory_pb2.Memory:
        """Move a memory to another life-cycle state (FAILED_PRECONDITION when the move is illegal)."""
        request = lifecycle_pb2.TransitionRequest(
            name=name,
            target_state=state,
            reason=reason,
            related_name=related_name,
            expected_version=expected_version,
            request_id=request_id,
        )
        async with _api_errors():
            return await self.lifecycle.Transition(request, timeout=self.timeout)

    async def rollback(self, name: str, version: int, *, request_id: str = "") -> memory_pb2.Memory:
        """Make an earlier version's content current again, as a new version."""
        request = lifecycle_pb2.RollbackRequest(name=name, version=version, request_id=request_id)
        async with _api_errors():
            return await self.lifecycle.Rollback(request, timeout=self.timeout)

    async def promote(
        self, cube_id: str, *, names: Iterable[str] = (), request_id: str = ""
    ) -> lifecycle_pb2.PromoteResponse:
        """Queue the distillation of the cube's live memories (or ``names``) into a LoRA adapter."""
        request = lifecycle_pb2.PromoteRequest(
            cube_id=cube_id,
            target_kind=memory_pb2.MEMORY_KIND_PARAMETRIC,
            names=list(names),
            request_id=request_id or uuid.uuid4().hex,
        )
        async with _api_errors():
            return await self.lifecycle.Promote(request, timeout=self.timeout)

    async def get_operation(self, name: str) -> lifecycle_pb2.Operation:
        async with _api_errors():
            return await self.lifecycle.GetOperation(
                lifecycle_pb2.GetOperationRequest(name=name), timeout=self.timeout
            )

    async def wait_operation(
        self,
        name: str,
        *,
        poll_seconds: float = 1.0,
        on_update: Callable[[lifecycle_pb2.Operation], None] | None = None,
    ) -> lifecycle_pb2.Operation:
        """Poll until the operation succeeds or fails; ``on_update`` sees every state."""
        done = (lifecycle_pb2.OPERATION_STATE_SUCCEEDED, lifecycle_pb2.OPERATION_STATE_FAILED)
        while True:
            operation = await self.get_operation(name)
            if on_update is not None:
                on_update(operation)
            if operation.state in done:
                return operation
            await asyncio.sleep(poll_seconds)

    async def get_policy(self, cube_id: str) -> lifecycle_pb2.Policy:
        async with _api_errors():
            return await self.lifecycle.GetPolicy(
                lifecycle_pb2.GetPolicyRequest(name=f"cubes/{cube_id}/policy"), timeout=self.timeout
            )

    async def set_policy(
        self,
        cube_id: str,
        *,
        ttl: dt.timedelta | None = None,
        decay_half_life: dt.timedelta | None = None,
        archive_threshold: float = 0.0,
        promote_access_count: int = 0,
        distill_activated_count: int = 0,
        resolve_conflicts: bool = True,
        redact: Iterable[int] = (),
        redact_names: Iterable[str] = (),
    ) -> lifecycle_pb2.Policy:
        """Replace the cube's life-cycle policy (unset durations mean never). ``redact``
        (lifecycle_pb2.PII_KIND_*) and ``redact_names`` are masked before anything is stored."""
        policy = lifecycle_pb2.Policy(
            name=f"cubes/{cube_id}/policy",
            archive_threshold=archive_threshold,
            promote_access_count=promote_access_count,
            distill_activated_count=distill_activated_count,
            resolve_conflicts=resolve_conflicts,
            redaction=lifecycle_pb2.Redaction(kinds=list(redact), names=list(redact_names)),
        )
        for field, value in (("ttl", ttl), ("decay_half_life", decay_half_life)):
            if value is not None:
                duration = duration_pb2.Duration()
                duration.FromTimedelta(value)
                getattr(policy, field).CopyFrom(duration)
        async with _api_errors():
            return await self.lifecycle.SetPolicy(
                lifecycle_pb2.SetPolicyRequest(policy=policy), timeout=self.timeout
            )

    # -- governance -----------------------------------------------------------------------

    async def create_principal(
        self,
        principal_id: str,
        *,
        kind: int = governance_pb2.PRINCIPAL_KIND_USER,
        display_name: str = "",
        admin: bool = False,
        request_id: str = "",
    ) -> governance_pb2.CreatePrincipalResponse:
        """A new principal (admins only); the response holds its API key, shown this once."""
        request = governance_pb2.CreatePrincipalRequest(
            principal=governance_pb2.Principal(
                name=f"principals/{principal_id}", kind=kind, display_name=display_name, admin=admin
            ),
            request_id=request_id or uuid.uuid4().hex,
        )
        async with _api_errors():
            return await self.governance.CreatePrincipal(request, timeout=self.timeout)

    async def share(self, cube_id: str, principal: str, role: int) -> governance_pb2.CubeAccess:
        """Grant ``principal`` (principals/{id}) READER or WRITER on the cube; role 0 revokes."""
        access = governance_pb2.CubeAccess(cube_id=cube_id, principal=principal, role=role)
        async with _api_errors():
            return await self.governance.SetCubeAccess(
                governance_pb2.SetCubeAccessRequest(access=access), timeout=self.timeout
            )

    async def revoke(self, cube_id: str, principal: str) -> governance_pb2.CubeAccess:
        return await self.share(cube_id, principal, governance_pb2.CUBE_ROLE_UNSPECIFIED)

    async def access(self, cube_id: str) -> list[governance_pb2.CubeAccess]:
        """Who holds which role on the cube (its owner first)."""
        async with _api_errors():
            reply = await self.governance.ListCubeAccess(
                governance_pb2.ListCubeAccessRequest(cube_id=cube_id), timeout=self.timeout
            )
        return list(reply.grants)

    async def check_access(
        self, cube_id: str, *, role: int = governance_pb2.CUBE_ROLE_READER, principal: str = ""
    ) -> governance_pb2.CheckAccessResponse:
        async with _api_errors():
            return await self.governance.CheckAccess(
                governance_pb2.CheckAccessRequest(cube_id=cube_id, principal=principal, role=role),
                timeout=self.timeout,
            )

    async def audit(
        self, *, cube_id: str = "", principal: str = "", denied_only: bool = False, page_size: int = 1000
    ) -> AsyncIterator[governance_pb2.AuditRecord]:
        """Audit records in chain order (all of them for an admin; a cube's for its owner)."""
        token = ""
        while True:
            request = governance_pb2.ListAuditRequest(
                cube_id=cube_id,
                principal=principal,
                denied_only=denied_only,
                page_size=page_size,
                page_token=token,
            )
            async with _api_errors():
                page = await self.governance.ListAudit(request, timeout=self.timeout)
            for record in page.records:
                yield record
            token = page.next_page_token
            if not token:
                return

    async def erase(self, subject: str, *, request_id: str = "") -> governance_pb2.EraseSubjectResponse:
        """Erase ``cubes/{cube}`` or ``principals/{id}`` and everything derived from it (admins)."""
        request = governance_pb2.EraseSubjectRequest(
            subject_id=subject, request_id=request_id or uuid.uuid4().hex
        )
        async with _api_errors():
            return await self.governance.EraseSubject(request, timeout=max(self.timeout, 300))

    # -- events ---------------------------------------------------------------------------

    async def watch(self, cube_id: str = "*") -> AsyncIterator[Event]:
        """Memory-change events of one cube (or all) as they happen."""
        import nats

        nc = await nats.connect(self.endpoints.nats_url, name="memos-sdk-watch")
        try:
            sub = await nc.subscribe(events_subject(cube_id))
            async for msg in sub.messages:
                yield decode_event(msg.headers, msg.data)
        finally:
            await nc.drain()
