"""gRPC channels to the mesh: plaintext, or mutual TLS when a mesh runs with it.

With mTLS every party shows a certificate signed by the mesh's CA. Clients take theirs from
``Tls`` or from ``MEMOS_TLS_CA_FILE``, ``MEMOS_TLS_CERT_FILE`` and ``MEMOS_TLS_KEY_FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Tls:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca: Path | str, cert: Path | str, key: Path | str) -> Tls:
        return cls(Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())

    @classmethod
    def from_env(cls) -> Tls | None:
        names = ("MEMOS_TLS_CA_FILE", "MEMOS_TLS_CERT_FILE", "MEMOS_TLS_KEY_FILE")
        paths = [os.environ.get(n, "") for n in names]
        return cls.from_files(*paths) if all(paths) else None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )


def aio_channel(
    addr: str, tls: Tls | None, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(addr, interceptors=list(interceptors))
    return grpc.aio.secure_channel(addr, tls.channel_credentials(), interceptors=list(interceptors))
