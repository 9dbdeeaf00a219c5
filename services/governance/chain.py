"""The audit log: records from the inbox appended, one writer at a time, to a hash chain.

Each record gets the next sequence and the hash of the one before it (memos_sdk.audit), and is
published with ``Nats-Expected-Last-Sequence``: should two governance replicas chain at once,
the loser's publish is refused and it re-reads the head, so the chain never forks. The stream
denies delete and purge. An inbox record is acked only once it is in the chain; redelivered
after a crash, it is dropped as a duplicate by its message id (within the bus's two-minute window).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from memos.governance.v1 import governance_pb2
from memos_sdk.audit import GENESIS, encode
from memos_sdk.wire import SUBJECT_PREFIX, Header, Stream, audit_subject
from services.common.bus import PullWorker, durable_worker
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence


class AuditChain:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._head: tuple[int, bytes] | None = None

    async def worker(self) -> PullWorker:
        return await durable_worker(
            self._js,
            Stream.AUDIT_INBOX,
            durable="governance-audit",
            filter_subject=f"{SUBJECT_PREFIX}.audit-inbox.>",
            handle=self._append_batch,
            batch_size=256,
            name="audit chain",
        )

    async def _append_batch(self, msgs) -> None:
        for msg in msgs:
            headers = msg.headers or {}
            try:
                if Header.AUDIT_BATCH in headers:
                    records = list(governance_pb2.AuditRecords.FromString(msg.data).records)
                else:
                    records = [governance_pb2.AuditRecord.FromString(msg.data)]
            except Exception:
                log.error("dropping a malformed audit inbox message (subject %s)", msg.subject)
                await msg.term()
                continue
            msg_id = headers.get(Header.MSG_ID) or f"inbox-{msg.metadata.sequence.stream}"
            for i, record in enumerate(records):
                # Each record of a batch has an id of its own, so a redelivered batch is chained once.
                await self.append(record, msg_id if len(records) == 1 else f"{msg_id}/{i}")
            await msg.ack()

    async def _load_head(self) -> tuple[int, bytes]:
        info = await self._js.stream_info(Stream.AUDIT)
        last = info.state.last_seq
        if not last:
            return 0, GENESIS
        stored = await self._js.get_msg(Stream.AUDIT, last)
        return last, hashlib.sha256(stored.data).digest()

    async def append(self, record: governance_pb2.AuditRecord, msg_id: str) -> int:
        """Chain one record; answers its sequence."""
        while True:
            if self._head is None:
                self._head = await self._load_head()
            sequence, prev = self._head
            record.sequence, record.prev_hash = sequence + 1, prev
            data = encode(record)
            headers = {Header.MSG_ID: msg_id, "Nats-Expected-Last-Sequence": str(sequence)}
            try:
                ack = await self._js.publish(audit_subject(record.cube_id), data, headers=headers, timeout=10)
            except APIError as err:
                if err.err_code == WRONG_LAST_SEQUENCE:
                    self._head = None  # another writer moved the head: re-read it
                    continue
                raise Unavailable(f"audit log did not acknowledge: {err}", reason="BUS_UNAVAILABLE") from err
            if ack.duplicate:
                self._head = None
                return ack.seq
            self._head = (ack.seq, hashlib.sha256(data).digest())
            return ack.seq

    async def read(
        self, start: int, *, cube_id: str = "", limit: int
    ) -> AsyncIterator[governance_pb2.AuditRecord]:
        """Records from sequence ``start`` on, in order (one cube's, or all), at most ``limit``."""
        info = await self._js.stream_info(Stream.AUDIT)
        if info.state.last_seq < start:
            return
        subject = audit_subject(cube_id) if cube_id else f"{SUBJECT_PREFIX}.audit.>"
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(start, 1),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        sub = await self._js.pull_subscribe(subject, stream=Stream.AUDIT, config=config)
        try:
            read = 0
            while read < limit:
                try:
                    msgs = await sub.fetch(min(256, limit - read), timeout=0.5)
                except TimeoutError:
                    return
                for msg in msgs:
                    read += 1
                    yield governance_pb2.AuditRecord.FromString(msg.data)
                    if msg.metadata.num_pending == 0:
                        return
        finally:
            await sub.unsubscribe()
