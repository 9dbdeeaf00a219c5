"""The audit log's hash chain, checked on the client: no need to trust the server that serves it.

Record n carries ``prev_hash`` = SHA-256 of record n-1's deterministic protobuf encoding (32 zero
bytes for record 1) and ``sequence`` = n, so a changed, removed or inserted record breaks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from memos.governance.v1 import governance_pb2

GENESIS = bytes(32)


def encode(record: governance_pb2.AuditRecord) -> bytes:
    return record.SerializeToString(deterministic=True)


def record_hash(record: governance_pb2.AuditRecord) -> bytes:
    return hashlib.sha256(encode(record)).digest()


@dataclass
class ChainReport:
    records: int = 0
    head_sequence: int = 0
    head_hash: str = ""
    # The first break found: the sequence where it shows and what is wrong.
    broken_at: int = 0
    problem: str = ""

    @property
    def intact(self) -> bool:
        return not self.problem


def verify_chain(records: Iterable[governance_pb2.AuditRecord]) -> ChainReport:
    """Check the whole log, from record 1, in order."""
    report = ChainReport()
    prev, expected = GENESIS, 1
    for record in records:
        if record.sequence != expected:
            report.broken_at, report.problem = (
                expected,
                (
                    f"record {expected} is missing (the next one is {record.sequence})"
                    if record.sequence > expected
                    else f"record {record.sequence} appears where {expected} should be"
                ),
            )
            return report
        if record.prev_hash != prev:
            report.broken_at = record.sequence
            report.problem = f"record {record.sequence} does not follow record {record.sequence - 1}: it or its predecessor was changed"
            return report
        prev, expected = record_hash(record), expected + 1
        report.records += 1
    report.head_sequence, report.head_hash = expected - 1, prev.hex()
    return report
