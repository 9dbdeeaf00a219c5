"""Audit records from every service: each access decision goes to the audit inbox, and governance
appends it to the hash-chained log (services/governance/chain.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from nats.js import JetStreamContext

from memos.governance.v1 import governance_pb2
from memos_sdk.wire import audit_inbox_subject

from .bus import publish
from .clock import now_timestamp

log = logging.getLogger(__name__)


class AuditTrail:
    """``await record(r, wait=True)`` returns once the record is stored; ``wait=False`` queues it
    (reads go that way, so a search does not wait for the bus)."""

    def __init__(self, js: JetStreamContext, service: str, *, queue_size: int = 10_000) -> None:
        self._js = js
        self._service = service
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

    async def run(self) -> None:
        while True:
            record = await self._queue.get()
            try:
                await self._publish(record)
            except Exception as err:  # the bus is down: keep the record, try again shortly
                log.warning("audit record not published yet: %s", err)
                await asyncio.sleep(0.5)
                with contextlib.suppress(asyncio.QueueFull):
                    self._queue.put_nowait(record)
            finally:
                self._queue.task_done()

    async def flush(self, wait_seconds: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), wait_seconds)
