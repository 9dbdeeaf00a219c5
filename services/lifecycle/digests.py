"""Digests that restate a withdrawn memory are withdrawn with it.

A digest (the reader's summary of what a speaker said of themselves in a session) quotes its
parents' words. When one of them is superseded, deleted or expires, the digest would go on
saying it, so it is archived (rule ``source_changed``); the other statements stay searchable on
their own. A merged memory is not a reason: its words live on in the memory it was merged into.
"""

from __future__ import annotations

import logging

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2, vault_pb2_grpc
from memos_sdk.wire import EventKind
from services.common import validation
from services.common.clients import listed

from .moves import Mover

log = logging.getLogger(__name__)

WITHDRAWING = (EventKind.MEMORY_DELETED, EventKind.MEMORY_SUPERSEDED, EventKind.MEMORY_EXPIRED)
_WITHDRAWING_TYPES = frozenset(kind.ce_type for kind in WITHDRAWING)


def withdraws_digests(ce_type: str) -> bool:
    return ce_type in _WITHDRAWING_TYPES


async def withdraw_digests(
    vault: vault_pb2_grpc.VaultServiceStub, mover: Mover, name: str, what: str, *, call_seconds: float
) -> int:
    """Archive the live digests derived from ``name``, which was ``what`` (superseded, ...)."""
    cube_id, _ = validation.memory_name(name)
    derived = vault_pb2.MemoryFilter(types=[memory_pb2.MEMORY_TYPE_SUMMARY], parent_name=name)
    withdrawn = 0
    for digest in await listed(vault, cube_id, derived, call_seconds=call_seconds):
        if await mover.withdraw(digest, name, f"{name} was {what}; the digest restated it"):
            log.info("digest %s withdrawn: %s was %s", digest.name, name, what)
            withdrawn += 1
    return withdrawn
