"""Where the services listen. A local mesh derives every port from one base (default 50050)."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Start order of a local mesh; stopped in reverse.
SERVICES = ("inference", "vault", "reader", "scheduler", "lifecycle", "governance", "store", "trainer")
DEFAULT_PORT_BASE = 50050


@dataclass(frozen=True)
class LocalPorts:
    """Every port of a local mesh, derived from one base so several meshes can run side by side."""

    base: int = DEFAULT_PORT_BASE
    host: str = "127.0.0.1"

    def grpc(self, service: str) -> int:
        return self.base + 1 + SERVICES.index(service)

    def addr(self, service: str) -> str:
        return f"{self.host}:{self.grpc(service)}"

    @property
    def nats(self) -> int:
        return self.base + 10

    @property
    def nats_monitor(self) -> int:
        return self.base + 11

    @property
    def triton_grpc(self) -> int:
        return self.base + 12

    @property
    def triton_http(self) -> int:
        return self.base + 13

    @property
    def triton_metrics(self) -> int:
        return self.base + 14

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.nats}"

    def all(self) -> list[int]:
        extra = [self.nats, self.nats_monitor, self.triton_grpc, self.triton_http, self.triton_metrics]
        return [self.grpc(s) for s in SERVICES] + extra


@dataclass(frozen=True)
class Endpoints:
    reader: str
    vault: str
    scheduler: str
    nats_url: str
    lifecycle: str = ""
    governance: str = ""

    @classmethod
    def local(cls, base: int = DEFAULT_PORT_BASE) -> Endpoints:
        p = LocalPorts(base)
        return cls(
            p.addr("reader"),
            p.addr("vault"),
            p.addr("scheduler"),
            p.nats_url,
            p.addr("lifecycle"),
            p.addr("governance"),
        )

    @classmethod
    def from_env(cls) -> Endpoints:
        """MEMOS_READER_ADDR, MEMOS_VAULT_ADDR, MEMOS_SCHEDULER_ADDR, MEMOS_LIFECYCLE_ADDR,
        MEMOS_GOVERNANCE_ADDR, MEMOS_NATS_URL override the local mesh at MEMOS_PORT_BASE (default 50050)."""
        local = cls.local(int(os.environ.get("MEMOS_PORT_BASE", DEFAULT_PORT_BASE)))
        return cls(
            reader=os.environ.get("MEMOS_READER_ADDR", local.reader),
            vault=os.environ.get("MEMOS_VAULT_ADDR", local.vault),
            scheduler=os.environ.get("MEMOS_SCHEDULER_ADDR", local.scheduler),
            nats_url=os.environ.get("MEMOS_NATS_URL", local.nats_url),
            lifecycle=os.environ.get("MEMOS_LIFECYCLE_ADDR", local.lifecycle),
            governance=os.environ.get("MEMOS_GOVERNANCE_ADDR", local.governance),
        )
