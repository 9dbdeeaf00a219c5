"""Who is calling: API keys, signed tokens, and the identity a service calls its peers with.

Governance signs tokens (JWT, EdDSA over Ed25519) with its private key; every service verifies
them with the public key alone, so no request costs a call to governance. A service calling a
peer while it serves a request passes the caller's token on (the peer checks the caller's rights
itself); work of its own (sweeps, jobs) runs under the service's own principal.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from memos.governance.v1 import governance_pb2
from memos_sdk.auth import TokenSource
from memos_sdk.errors import MemosAPIError

from .errors import InvalidArgument, Unauthenticated

log = logging.getLogger(__name__)

ISSUER = "memos-governance"
AUDIENCE = "memos-mesh"
ALGORITHM = "EdDSA"
SERVICE = governance_pb2.PRINCIPAL_KIND_SERVICE


@dataclass(frozen=True)
class Caller:
    """A verified token's subject."""

    principal: str  # principals/{id}
    kind: int  # governance_pb2.PrincipalKind
    admin: bool
    token: str

    @property
    def is_service(self) -> bool:
        return self.kind == SERVICE


# The caller of the request being served; set by the server interceptor.
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("memos_caller", default=None)


# -- key pairs ------------------------------------------------------------------------------


def generate_signing_key(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair as PEM files (the private one mode 0600); kept if both exist."""
    if private_path.exists() and public_path.exists():
        return
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(b"")
    private_path.chmod(0o600)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- API keys -------------------------------------------------------------------------------

API_KEY_PREFIX = "memos"


def new_api_key() -> tuple[str, str]:
    """(key id, the key to hand out: memos_<key id>_<secret>)."""
    kid = uuid.uuid4().hex[:16]
    return kid, f"{API_KEY_PREFIX}_{kid}_{secrets.token_urlsafe(32)}"


def split_api_key(api_key: str) -> tuple[str, str]:
    """(key id, secret); the key id finds the stored hash, the secret is checked against it."""
    parts = api_key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 16 or len(parts[2]) < 32:
        raise InvalidArgument("api_key is malformed (memos_<key id>_<secret>)", reason="MALFORMED_API_KEY")
    return parts[1], parts[2]


def hash_secret(secret: str) -> str:
    # A plain SHA-256 is enough here: the secret is 256 random bits, not a password, so there is
    # nothing for a slow hash to protect against guessing.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


# -- tokens ---------------------------------------------------------------------------------


class TokenSigner:
    """Governance's side: signs tokens for authenticated principals."""

    def __init__(self, private_key: Ed25519PrivateKey, ttl_seconds: float) -> None:
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self.ttl_seconds = ttl_seconds
        self.verifier = TokenVerifier(private_key.public_key())

    def issue(self, principal: governance_pb2.Principal) -> tuple[str, int]:
        """(token, expiry as Unix seconds)."""
        now = int(time.time())
        expires = now + int(self.ttl_seconds)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": principal.name,
            "iat": now,
            "exp": expires,
            "jti": uuid.uuid4().hex,
            "kind": int(principal.kind),
            "adm": bool(principal.admin),
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, expires


class TokenVerifier:
    """Every service's side: checks signature, issuer, audience and expiry with the public key."""

    def __init__(
        self, public_key: Ed25519PublicKey, *, leeway_seconds: float = 5.0, remembered: int = 4096
    ) -> None:
        self._key = public_key
        self._leeway = leeway_seconds
        # A client sends the same token for minutes; its signature is checked once, its expiry
        # on every call.
        self._verified: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._remembered = remembered

    @classmethod
    def from_file(cls, path: Path) -> TokenVerifier:
        return cls(load_public_key(path))

    def verify(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated(
                "no token: send 'authorization: Bearer <token>' (the SDK and CLI do it given an API key)",
                reason="TOKEN_MISSING",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the authorization header must be 'Bearer <token>'", reason="TOKEN_MALFORMED"
            )
        known = self._verified.get(token)
        if known is not None:
            caller, expires = known
            if time.time() <= expires + self._leeway:
                self._verified.move_to_end(token)
                return caller
            del self._verified[token]
            raise Unauthenticated("the token has expired; get a new one", reason="TOKEN_EXPIRED")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired; get a new one", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError as err:
            raise Unauthenticated(f"the token is not valid: {err}", reason="TOKEN_INVALID") from None
        caller = Caller(
            principal=str(claims["sub"]),
            kind=int(claims.get("kind", 0)),
            admin=bool(claims.get("adm", False)),
            token=token,
        )
        self._verified[token] = (caller, float(claims["exp"]))
        if len(self._verified) > self._remembered:
            self._verified.popitem(last=False)
        return caller


# A service passing its caller's token on also sends its own in this header: the peer then knows
# the call relays a request that was admitted, counted and audited where it came in.
RELAY_HEADER = "memos-relayed-by"
RELAY_RETRY_SECONDS = 30.0


class OutgoingToken:
    """The token a service sends to its peers: its caller's while serving a request, else its own."""

    def __init__(self, own: TokenSource | None) -> None:
        self._own = own
        self._relay_retry_at = 0.0

    async def __call__(self) -> str | None:
        caller = current_caller.get()
        if caller is not None:
            return caller.token
        return await self._own.token() if self._own is not None else None

    async def relay(self) -> str | None:
        """The service's own token while it passes a caller's on (for RELAY_HEADER), else None.

        Without a token of its own (governance unreachable), the call goes unmarked for a while:
        the peer then records the read again, which costs an audit record, not the caller's call.
        """
        if current_caller.get() is None or self._own is None or time.monotonic() < self._relay_retry_at:
            return None
        try:
            return await self._own.token()
        except MemosAPIError as err:
            self._relay_retry_at = time.monotonic() + RELAY_RETRY_SECONDS
            log.warning(
                "relayed calls go unmarked for %.0fs: no token of our own (%s)", RELAY_RETRY_SECONDS, err
            )
            return None

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()


def caller_principal() -> str:
    """The principal of the request being served (what provenance records as the writer)."""
    caller = current_caller.get()
    if caller is None:
        raise RuntimeError("no caller: only request handlers write on someone's behalf")
    return caller.principal
