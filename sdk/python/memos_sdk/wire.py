"""Wire constants of the mesh: NATS subjects, stream names, CloudEvents types and headers.

Everything that crosses the message bus is named here, so publishers (the services) and
subscribers (the SDK, `memos watch`, programs in other languages reading docs/events.md)
agree on one definition.
"""

from __future__ import annotations

import re
from enum import StrEnum

SUBJECT_PREFIX = "memos.v1"

# A cube id is one NATS subject token and part of resource names: no dots, wildcards or spaces.
CUBE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MEMORY_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
MEMORY_NAME_PATTERN = re.compile(
    r"^cubes/(?P<cube>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/memories/(?P<memory>[0-9a-f]{32})$"
)


class Stream(StrEnum):
    """JetStream streams owned by the mesh."""

    WRITES = "MEMOS_WRITES"  # the write log: system of record for memory items
    EVENTS = "MEMOS_EVENTS"  # memory-change events for subscribers
    USAGE = "MEMOS_USAGE"  # which memories searches returned (usage counts), kept a while
    JOBS = "MEMOS_JOBS"  # work queue of long-running jobs (distillation), each taken once
    AUDIT_INBOX = "MEMOS_AUDIT_INBOX"  # access decisions as services make them, until governance chains them
    AUDIT = "MEMOS_AUDIT"  # the hash-chained audit log: append-only (no delete, no purge)
    SUBJECT_KEYS = "MEMOS_SUBJECT_KEYS"  # one data key per (cube, principal), destroyed on erasure


class Bucket(StrEnum):
    """JetStream key-value buckets owned by the mesh."""

    ACTIVATION = "MEMOS_ACTIVATION"  # cube id -> memos.type.v1.Activation (its current KV cache)
    POLICIES = "MEMOS_POLICIES"  # cube id -> memos.lifecycle.v1.Policy
    OPERATIONS = "MEMOS_OPERATIONS"  # operation id -> memos.lifecycle.v1.Operation
    ACL = "MEMOS_ACL"  # cube id -> memos.governance.v1.CubeAcl (owner and grants)
    PRINCIPALS = "MEMOS_PRINCIPALS"  # "p.<id>" -> StoredPrincipal, "k.<key id>" -> ApiKeyRecord
    # "<cube>.<session>" (digests) -> the session's last piece number so far (decimal)
    SESSION_NUMBERS = "MEMOS_SESSION_NUMBERS"
    # "<cube>.<request>.<session>" (digests) -> the number a request's pieces of a session follow
    NUMBER_GRANTS = "MEMOS_NUMBER_GRANTS"


class EventKind(StrEnum):
    """The <kind> part of an event subject; ce-type is "memos.v1.<kind>"."""

    MEMORY_CREATED = "memory.created"
    MEMORY_UPDATED = "memory.updated"
    MEMORY_DELETED = "memory.deleted"
    # Life-cycle moves, one kind per target state (payload MemoryStateChanged); the move to
    # DELETED is memory.deleted with purged = false.
    MEMORY_ACTIVATED = "memory.activated"
    MEMORY_ARCHIVED = "memory.archived"
    MEMORY_EXPIRED = "memory.expired"
    MEMORY_MERGED = "memory.merged"
    MEMORY_SUPERSEDED = "memory.superseded"
    KV_BUILT = "kv.built"
    ADAPTER_TRAINED = "adapter.trained"
    CUBE_ERASED = "cube.erased"

    @property
    def ce_type(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.value}"


class Header(StrEnum):
    """Message headers: CloudEvents binary mode plus NATS and W3C trace context."""

    CE_SPECVERSION = "ce-specversion"
    CE_ID = "ce-id"
    CE_TYPE = "ce-type"
    CE_SOURCE = "ce-source"
    CE_SUBJECT = "ce-subject"
    CE_TIME = "ce-time"
    CONTENT_TYPE = "content-type"
    MSG_ID = "Nats-Msg-Id"
    # On the write log: the subject key (<cube>.<principal id>) a command is sealed with.
    SUBJECT_KEY = "Memos-Subject-Key"
    # On the audit inbox: the message holds AuditRecords, not one AuditRecord.
    AUDIT_BATCH = "Memos-Audit-Batch"
    TRACEPARENT = "traceparent"


PROTOBUF_CONTENT_TYPE = "application/protobuf"


def writes_subject(cube_id: str) -> str:
    return f"{SUBJECT_PREFIX}.writes.{cube_id}"


def usage_subject(cube_id: str) -> str:
    """Usage of one cube's memories; a record of several cubes' goes on MANY_CUBES."""
    return f"{SUBJECT_PREFIX}.usage.{cube_id or MANY_CUBES}"


def jobs_subject(kind: str, cube_id: str) -> str:
    return f"{SUBJECT_PREFIX}.jobs.{kind}.{cube_id}"


def events_subject(cube_id: str, kind: EventKind | str = ">") -> str:
    """Subject of one kind of event of a cube; with the default, a wildcard for all of them.

    ``cube_id`` may be "*" to match every cube.
    """
    kind_value = kind.value if isinstance(kind, EventKind) else kind
    return f"{SUBJECT_PREFIX}.events.{cube_id}.{kind_value}"


def memory_name(cube_id: str, memory_id: str) -> str:
    return f"cubes/{cube_id}/memories/{memory_id}"


# Audit records of decisions that name no cube (principals, tokens) use this subject token.
NO_CUBE = "_"
# A message that gathers several cubes' records (usage, audit reads) uses this one. Neither
# can be a cube: cube ids start with a letter or digit.
MANY_CUBES = "_many"


def audit_inbox_subject(cube_id: str) -> str:
    """The inbox subject of one cube's records; ``MANY_CUBES`` for a batch of several cubes'."""
    return f"{SUBJECT_PREFIX}.audit-inbox.{cube_id or NO_CUBE}"


def audit_subject(cube_id: str) -> str:
    """The chained audit records of a cube ("*" for every cube, NO_CUBE for none)."""
    return f"{SUBJECT_PREFIX}.audit.{cube_id or NO_CUBE}"
