"""Opaque page tokens bound to the query that produced them.

A token carries a position and a keyed checksum of the query's parameters; a token presented
with any other query, or altered, is rejected with INVALID_ARGUMENT (AIP-158).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from .errors import InvalidArgument


class PageTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _fingerprint(self, query: bytes) -> str:
        return hmac.new(self._key, query, hashlib.sha256).hexdigest()[:24]

    def encode(self, query: bytes, position: Any) -> str:
        body = json.dumps({"q": self._fingerprint(query), "p": position}, separators=(",", ":"))
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    def decode(self, token: str, query: bytes) -> Any:
        """The position in ``token``, or None for an empty token (first page)."""
        if not token:
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            fingerprint, position = body["q"], body["p"]
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidArgument("page_token is malformed", reason="INVALID_PAGE_TOKEN") from err
        if not hmac.compare_digest(str(fingerprint), self._fingerprint(query)):
            raise InvalidArgument(
                "page_token belongs to another query; repeat the original parameters or start over",
                reason="PAGE_TOKEN_MISMATCH",
            )
        return position
