"""The error taxonomy of the mesh and its one mapping to gRPC statuses.

Handlers raise these; the server interceptor turns them into a status with a
google.rpc.ErrorInfo (reason, domain, metadata) so a client in any language can act on it.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "memos.dev"


class MemosError(Exception):
    """Base class. ``reason`` is a stable UPPER_SNAKE identifier; ``retryable`` tells clients."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
    retryable = False

    def __init__(self, message: str, *, reason: str | None = None, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(MemosError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(MemosError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(MemosError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Unauthenticated(MemosError):
    """No token, or one that is expired, forged or malformed: get a new token."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(MemosError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class FailedPrecondition(MemosError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(MemosError):
    """A concurrent change won; re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONFLICT"
    retryable = True


class ResourceExhausted(MemosError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    retryable = True


class Unavailable(MemosError):
    """A dependency (bus, index, model) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    retryable = True


class DeadlineExceeded(MemosError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    retryable = True


class Unimplemented(MemosError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_YET_AVAILABLE"


def to_status(error: MemosError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=[detail]
    )
    return rpc_status.to_status(status)
