"""A service whose RPCs arrive with a later capability: it runs, reports health, and answers
every RPC with UNIMPLEMENTED and a message that says when the RPC arrives."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from .access import SIGNED_IN
from .errors import Unimplemented
from .grpc_host import Component, Registration


def placeholder_setup(servicer_base: type, add: Any, descriptor: ServiceDescriptor, arrives_with: str):
    def make(method: str):
        async def handler(self, request, context):
            raise Unimplemented(f"{descriptor.name}.{method} arrives with {arrives_with}", method=method)

        return handler

    servicer_type = type(
        f"Placeholder{descriptor.name}",
        (servicer_base,),
        {m.name: make(m.name) for m in descriptor.methods},
    )

    async def setup(stack: AsyncExitStack, settings: Any) -> Component:
        # Signed-in callers learn the RPC is not there yet; nothing is read or written.
        access = {m.name: SIGNED_IN for m in descriptor.methods}
        return Component(registrations=[Registration(add, servicer_type(), descriptor.full_name, access)])

    return setup
