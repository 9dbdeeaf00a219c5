"""Calling other services: channels that carry the trace, and errors passed on with their reason."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from memos_sdk._tracing import trace_interceptors
from memos_sdk.auth import auth_interceptors
from memos_sdk.channels import aio_channel
from memos_sdk.errors import MemosAPIError

from . import states
from .auth import RELAY_HEADER
from .errors import MemosError, Unavailable
from .guard import outgoing_token
from .settings import ServiceSettings

_PASS_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@contextlib.asynccontextmanager
async def open_channel(addr: str, settings: ServiceSettings) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a peer whose calls carry the trace and a token (see auth.OutgoingToken)."""
    token = outgoing_token(settings)
    interceptors = [
        *trace_interceptors(),
        *auth_interceptors(token),
        *auth_interceptors(token.relay, header=RELAY_HEADER),
    ]
    channel = aio_channel(addr, settings.tls(), interceptors)
    try:
        yield channel
    finally:
        await channel.close()
        await token.close()


class _Forwarded(MemosError):
    pass


@contextlib.asynccontextmanager
async def forward_errors(peer: str) -> AsyncIterator[None]:
    """Re-raise a peer's failure as ours: the caller's mistakes keep their code and reason,
    anything else becomes UNAVAILABLE naming the peer."""
    try:
        yield
    # A MemosAPIError comes from the call's token: the token service failed before the peer was asked.
    except (grpc.aio.AioRpcError, MemosAPIError) as failure:
        error = failure if isinstance(failure, MemosAPIError) else MemosAPIError.from_rpc_error(failure)
        if error.code in _PASS_THROUGH:
            forwarded = _Forwarded(error.message, reason=error.reason or error.code.name, **error.metadata)
            forwarded.code = error.code
            raise forwarded from failure
        raise Unavailable(
            f"{peer} failed: {error.code.name}: {error.message}", reason=f"{peer.upper()}_UNAVAILABLE"
        ) from failure


async def paged(
    call: Callable[..., Awaitable[Any]], request: Any, items: str, *, peer: str, call_seconds: float
) -> AsyncIterator[Any]:
    """Every item of a paginated List call: ``items`` names the response's repeated field;
    ``call_seconds`` is the deadline of each page's call."""
    while True:
        async with forward_errors(peer):
            page = await call(request, timeout=call_seconds)
        for item in getattr(page, items):
            yield item
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


PARAMETRIC = vault_pb2.MemoryFilter(kinds=[memory_pb2.MEMORY_KIND_PARAMETRIC])
# Every memory of a cube, whatever its state and kind.
EVERY_MEMORY = vault_pb2.MemoryFilter(
    states=[s for s in memory_pb2.MemoryState.values() if s != memory_pb2.MEMORY_STATE_UNSPECIFIED],
    kinds=[k for k in memory_pb2.MemoryKind.values() if k != memory_pb2.MEMORY_KIND_UNSPECIFIED],
)


async def live_memories(
    vault: vault_pb2_grpc.VaultServiceStub, cube_id: str, names: list[str], *, call_seconds: float
) -> list[memory_pb2.Memory]:
    """The current versions of those of ``names`` that exist and are in a live state."""
    if not names:
        return []
    async with forward_errors("vault"):
        got = await vault.BatchGetMemories(
            vault_pb2.BatchGetMemoriesRequest(cube_id=cube_id, names=names, allow_missing=True),
            timeout=call_seconds,
        )
    return [m for m in got.memories if m.state in states.LIVE]


async def listed(
    vault: vault_pb2_grpc.VaultServiceStub,
    cube_id: str,
    flt: vault_pb2.MemoryFilter,
    *,
    call_seconds: float,
) -> list[memory_pb2.Memory]:
    """Every memory of the cube that ``flt`` selects, all pages."""
    listing = paged(
        vault.ListMemories,
        vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=100, filter=flt),
        "memories",
        peer="vault",
        call_seconds=call_seconds,
    )
    return [m async for m in listing]


async def live_adapters(
    vault: vault_pb2_grpc.VaultServiceStub, cube_id: str, *, call_seconds: float, learned: str = ""
) -> list[memory_pb2.Memory]:
    """The cube's live adapters (parametric memories); with ``learned``, only those distilled
    from the memory of that name."""
    flt = vault_pb2.MemoryFilter(kinds=PARAMETRIC.kinds, parent_name=learned) if learned else PARAMETRIC
    return await listed(vault, cube_id, flt, call_seconds=call_seconds)
