"""A JetStream key-value bucket mirrored in memory by a watch: reads cost no round trip, and a
change made anywhere is seen within milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from nats.js.kv import KeyValue

from .tasks import follow_forever, run_until_closed


class KvMirror:
    def __init__(self, bucket: KeyValue) -> None:
        self.bucket = bucket
        self._values: dict[str, bytes] = {}
        self._revisions: dict[str, int] = {}
        self._ready = asyncio.Event()

    def get(self, key: str) -> bytes | None:
        return self._values.get(key)

    def keys(self) -> list[str]:
        return list(self._values)

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        """Take a value read or written directly (ahead of the watch); older states are ignored."""
        if revision < self._revisions.get(key, 0):
            return
        self._revisions[key] = revision
        if value:
            self._values[key] = value
        else:
            self._values.pop(key, None)

    async def run(self) -> None:
        """Follow the bucket until cancelled; a broken watch is opened again."""
        await follow_forever(f"watch of {self.bucket._name}", self._follow)

    async def _follow(self) -> None:
        watcher = await self.bucket.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are in
                    self._ready.set()
                    continue
                self.apply(entry.key, entry.value if entry.operation is None else None, entry.revision)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def ready(self, wait_seconds: float = 10.0) -> None:
        await asyncio.wait_for(self._ready.wait(), wait_seconds)

    async def start(self, stack: AsyncExitStack) -> None:
        """Follow the bucket until ``stack`` closes; returns once the current values are in."""
        run_until_closed(stack, self.run, f"mirror:{self.bucket._name}")
        await self.ready()
