"""The local launcher: nats-server plus the eight services on loopback, with embedded defaults."""

from memos_sdk.endpoints import SERVICES, LocalPorts

from .mesh import Mesh, MeshError

__all__ = ["SERVICES", "LocalPorts", "Mesh", "MeshError"]
