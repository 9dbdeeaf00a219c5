"""Records which memories searches returned (MEMOS_USAGE); the vault folds them into usage counts,
and the lifecycle's decay and promotion rules read those.

Recording never slows a search down: uses gather for ``linger_seconds`` and go out as one record,
whatever their cubes (a memory used n times is named n times; names carry their cube), published
in the background: a record a cube cost a message for every search when searches spread over many
cubes. A record that cannot be published is logged and dropped (usage is a signal, not data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable

from nats.js import JetStreamContext

from memos.vault.v1 import commands_pb2
from memos_sdk.wire import usage_subject
from services.common.bus import publish
from services.common.clock import now_timestamp

log = logging.getLogger(__name__)

MAX_NAMES_PER_RECORD = 4096  # keeps a record far below the bus's message size limit


class AccessRecorder:
    def __init__(self, js: JetStreamContext, *, enabled: bool, linger_seconds: float = 0.0) -> None:
        self._js = js
        self._enabled = enabled
        self._linger = linger_seconds
        self._uses: list[str] = []
        self._cubes: set[str] = set()
        self._gathering = False  # a task is waiting out the linger for the uses gathered so far
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def record(self, cube_id: str, names: Iterable[str]) -> None:
        """One use of each of ``names`` (repeats within one call count once)."""
        names = list(dict.fromkeys(names))
        if not (self._enabled and names):
            return
        self._uses += names
        self._cubes.add(cube_id)
        if not self._gathering:
            self._gathering = True
            task = asyncio.create_task(self._publish_after_linger())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _publish_after_linger(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self._linger)
        self._gathering = False
        names, self._uses = self._uses, []
        cubes, self._cubes = self._cubes, set()
        cube_id = cubes.pop() if len(cubes) == 1 else ""  # "": the names of several cubes
        for start in range(0, len(names), MAX_NAMES_PER_RECORD):
            chunk = names[start : start + MAX_NAMES_PER_RECORD]
            record = commands_pb2.AccessRecord(cube_id=cube_id, names=chunk, time=now_timestamp())
            try:
                await publish(
                    self._js, usage_subject(cube_id), record.SerializeToString(), msg_id=uuid.uuid4().hex
                )
            except Exception as err:
                log.warning("usage of %d memories not recorded: %s", len(chunk), err)

    async def close(self) -> None:
        """Publish what has gathered, and wait for the records in flight."""
        self._closing.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
