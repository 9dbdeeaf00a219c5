"""Calling other services: channels that carry the trace, and errors passed on with their reason."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from memos_sdk._tracing import trace_interceptors
from memos_sdk.errors import MemosAPIError

from .errors import MemosError, Unavailable

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
async def open_channel(addr: str) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(addr, interceptors=trace_interceptors())
    try:
        yield channel
    finally:
        await channel.close()


class _Forwarded(MemosError):
    pass


@contextlib.asynccontextmanager
async def forward_errors(peer: str) -> AsyncIterator[None]:
    """Re-raise a peer's failure as ours: the caller's mistakes keep their code and reason,
    anything else becomes UNAVAILABLE naming the peer."""
    try:
        yield
    except grpc.aio.AioRpcError as rpc_error:
        error = MemosAPIError.from_rpc_error(rpc_error)
        if error.code in _PASS_THROUGH:
            forwarded = _Forwarded(error.message, reason=error.reason or error.code.name, **error.metadata)
            forwarded.code = error.code
            raise forwarded from rpc_error
        raise Unavailable(
            f"{peer} failed: {error.code.name}: {error.message}", reason=f"{peer.upper()}_UNAVAILABLE"
        ) from rpc_error


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
