"""Credentials: an API key is exchanged with governance for short-lived tokens, and every call
carries the current one as ``authorization: Bearer <token>``.

Where a key comes from, first found wins: the ``api_key`` argument, ``MEMOS_API_KEY``, then the
credentials file (``MEMOS_CREDENTIALS_FILE``, default ``~/.config/memos/credentials.json``) that
``make run`` writes for the local admin, keyed by governance address.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from memos.governance.v1 import governance_pb2, governance_pb2_grpc

from .channels import Tls, aio_channel
from .errors import MemosAPIError

AUTH_HEADER = "authorization"
API_KEY_ENV = "MEMOS_API_KEY"
CREDENTIALS_ENV = "MEMOS_CREDENTIALS_FILE"


def credentials_file() -> Path:
    default = Path.home() / ".config" / "memos" / "credentials.json"
    return Path(os.environ.get(CREDENTIALS_ENV) or default)


def _saved() -> dict[str, str]:
    try:
        return json.loads(credentials_file().read_text())
    except (OSError, ValueError):
        return {}


def saved_api_key(governance_addr: str) -> str | None:
    return _saved().get(governance_addr)


def save_api_key(governance_addr: str, api_key: str) -> Path:
    """Remember the key for that governance (file mode 0600)."""
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = _saved() | {governance_addr: api_key}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(saved, out, indent=2)
    tmp.replace(path)
    return path


def find_api_key(governance_addr: str) -> str | None:
    return os.environ.get(API_KEY_ENV) or saved_api_key(governance_addr)


class TokenSource:
    """Tokens for one API key, fetched when first needed and again before they expire."""

    def __init__(
        self, governance_addr: str, api_key: str, *, tls: Tls | None = None, timeout_seconds: float = 10.0
    ) -> None:
        self._addr = governance_addr
        self._tls = tls
        self._api_key = api_key
        self._timeout = timeout_seconds
        self._token = ""
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None

    async def token(self) -> str:
        if self._token and time.time() < self._refresh_at:
            return self._token
        async with self._lock:
            if not self._token or time.time() >= self._refresh_at:
                await self._issue()
        return self._token

    async def _issue(self) -> None:
        if self._channel is None:
            self._channel = aio_channel(self._addr, self._tls)
        stub = governance_pb2_grpc.GovernanceServiceStub(self._channel)
        started = time.time()
        try:
            reply = await stub.IssueToken(
                governance_pb2.IssueTokenRequest(api_key=self._api_key), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            raise MemosAPIError.from_rpc_error(err) from None
        lifetime = max(reply.expire_time.seconds - started, 0)
        # Renew when 80% of the lifetime has passed, so a call never leaves with a stale token.
        self._token, self._refresh_at = reply.token, started + 0.8 * lifetime

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


TokenGetter = Callable[[], Awaitable[str | None]]


def _with_token(
    details: grpc.aio.ClientCallDetails, token: str | None, header: str
) -> grpc.aio.ClientCallDetails:
    if not token:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    if header in metadata:
        return details
    metadata.add(header, f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, get_token: TokenGetter, header: str) -> None:
        self._get_token = get_token
        self._header = header

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        details = _with_token(client_call_details, await self._get_token(), self._header)
        return await continuation(details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, get_token: TokenGetter, header: str) -> None:
        self._get_token = get_token
        self._header = header

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        details = _with_token(client_call_details, await self._get_token(), self._header)
        return await continuation(details, request)


def auth_interceptors(get_token: TokenGetter, header: str = AUTH_HEADER) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send ``await get_token()`` (when it is not empty) as a bearer token in
    ``header``."""
    return [_UnaryUnary(get_token, header), _UnaryStream(get_token, header)]
