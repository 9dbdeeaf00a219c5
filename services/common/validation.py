"""Checks every service applies to request fields; each failure is an InvalidArgument with a reason."""

from __future__ import annotations

import re

from memos_sdk.wire import CUBE_ID_PATTERN, MEMORY_NAME_PATTERN

from .errors import InvalidArgument

REQUEST_ID_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")


def cube_id(value: str, field: str = "cube_id") -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", reason="MISSING_FIELD", field=field)
    if not CUBE_ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value[:80]!r} is malformed: 1-64 letters, digits, '_' or '-', starting with a letter or digit",
            reason="MALFORMED_CUBE_ID",
            field=field,
        )
    return value


def memory_name(value: str, field: str = "name") -> tuple[str, str]:
    """Split cubes/{cube}/memories/{memory} into (cube_id, memory_id)."""
    if not value:
        raise InvalidArgument(f"{field} is required", reason="MISSING_FIELD", field=field)
    match = MEMORY_NAME_PATTERN.match(value)
    if not match:
        raise InvalidArgument(
            f"{field} {value[:120]!r} is malformed: expected cubes/{{cube}}/memories/{{32 hex digits}}",
            reason="MALFORMED_NAME",
            field=field,
        )
    return match["cube"], match["memory"]


def request_id(value: str, field: str = "request_id") -> str:
    if value and not REQUEST_ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} must be 1-128 printable ASCII characters without spaces",
            reason="MALFORMED_REQUEST_ID",
            field=field,
        )
    return value


def page_size(value: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative", reason="INVALID_PAGE_SIZE", field=field)
    return min(value or default, maximum)
