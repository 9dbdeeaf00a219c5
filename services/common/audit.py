"""Audit records from every service: each access decision goes to the audit inbox, and governance
appends it to the hash-chained log (services/governance/chain.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from nats.js import JetStreamContext

from memos.governance.v1 import governance_pb2
from memos_sdk.wire import MANY_CUBES, Header, audit_inbox_subject

from .bus import publish
from .clock import now_timestamp

log = logging.getLogger(__name__)


class AuditTrail:
    """``await record(r, wait=True)`` returns once the record is stored; ``wait=False`` queues it
    (reads go that way, so a search does not wait for the bus). Queued records gather for
    ``linger_seconds`` and go out as one message, whatever their cubes: a message a search, or a
    cube, cost the mesh more CPU than the search itself and lengthened the searches' tail."""

    def __init__(
        self,
        js: JetStreamContext,
        service: str,
        *,
        linger_seconds: float = 0.0,
        queue_size: int = 10_000,
        batch_size: int = 1_000,
    ) -> None:
        self._js = js
        self._service = service
        self._linger = linger_seconds
        self._batch_size = batch_size
        self._queue: asyncio.Queue[governance_pb2.AuditRecord] = asyncio.Queue(queue_size)
        self.dropped = 0

    async def record(self, record: governance_pb2.AuditRecord, *, wait: bool) -> None:
        record.service = self._service
        record.time.CopyFrom(now_timestamp())
        if wait:
            await self._publish(record)
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit queue full: a read decision was not recorded (%d so far)", self.dropped)

    async def _publish(self, record: governance_pb2.AuditRecord) -> None:
        subject = audit_inbox_subject(record.cube_id)
        await publish(self._js, subject, record.SerializeToString(), msg_id=uuid.uuid4().hex)

    async def _publish_batch(self, records: list[governance_pb2.AuditRecord]) -> None:
        cubes = {record.cube_id for record in records}
        await publish(
            self._js,
            audit_inbox_subject(cubes.pop() if len(cubes) == 1 else MANY_CUBES),
            governance_pb2.AuditRecords(records=records).SerializeToString(),
            msg_id=uuid.uuid4().hex,
            headers={Header.AUDIT_BATCH: str(len(records))},
        )

    async def run(self) -> None:
        while True:
            records = [await self._queue.get()]
            await asyncio.sleep(self._linger)
            while len(records) < self._batch_size and not self._queue.empty():
                records.append(self._queue.get_nowait())
            try:
                await self._publish_batch(records)
            except Exception as err:  # the bus is down: keep the records, try again shortly
                log.warning("audit records not published yet: %s", err)
                await asyncio.sleep(0.5)
                for record in records:
                    with contextlib.suppress(asyncio.QueueFull):
                        self._queue.put_nowait(record)
            finally:
                for _ in records:
                    self._queue.task_done()

    async def flush(self, wait_seconds: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), wait_seconds)
