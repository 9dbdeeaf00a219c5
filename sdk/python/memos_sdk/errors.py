"""Errors as the mesh reports them: a gRPC status plus google.rpc.ErrorInfo (reason, domain, metadata)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class MemosAPIError(Exception):
    """A failed call: ``code`` (grpc.StatusCode), ``reason`` (stable identifier), ``metadata``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]) -> None:
        super().__init__(f"{code.name}: {message} [{reason}]" if reason else f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> MemosAPIError:
        reason, metadata = "", {}
        status = rpc_status.from_call(error)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
        return cls(error.code(), error.details() or "", reason, metadata)
