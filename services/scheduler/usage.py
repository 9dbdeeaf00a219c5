"""Records which memories searches returned (MEMOS_USAGE); the vault folds them into usage counts,
and the lifecycle's decay and promotion rules read those.

Recording never slows a search down: records are published in the background, and a record that
cannot be published is logged and dropped (usage is a signal, not data).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable

from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import usage_subject
from services.common.bus import publish
from services.common.clock import now_timestamp

log = logging.getLogger(__name__)


class AccessRecorder:
    def __init__(self, js: JetStreamContext, *, enabled: bool) -> None:
        self._js = js
        self._enabled = enabled
        self._pending: set[asyncio.Task] = set()

    def record(self, cube_id: str, names: Iterable[str]) -> None:
        names = list(dict.fromkeys(names))
        if not (self._enabled and names):
            return
        record = commands_pb2.AccessRecord(cube_id=cube_id, names=names, time=now_timestamp())
        task = asyncio.create_task(self._publish(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, record: commands_pb2.AccessRecord) -> None:
        try:
            await publish(
                self._js, usage_subject(record.cube_id), record.SerializeToString(), msg_id=uuid.uuid4().hex
            )
        except Exception as err:
            log.warning("usage of %d memories in %s not recorded: %s", len(record.names), record.cube_id, err)

    async def close(self) -> None:
        """Wait for the records in flight."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
