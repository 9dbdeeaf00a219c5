"""A JetStream key-value bucket mirrored in memory by a watch: reads cost no round trip, and a
change made anywhere is seen within milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from nats.js.kv import KeyValue

log = logging.getLogger(__name__)


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
        while True:
            watcher = None
            try:
                watcher = await self.bucket.watchall()
                async for entry in watcher:
                    if entry is None:  # the initial values are in
                        self._ready.set()
                        continue
                    self.apply(entry.key, entry.value if entry.operation is None else None, entry.revision)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the bus reconnects by itself; watch again
                log.warning("watch of %s failed: %s; watching again", self.bucket._name, err)
                await asyncio.sleep(0.5)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    async def ready(self, wait_seconds: float = 10.0) -> None:
        await asyncio.wait_for(self._ready.wait(), wait_seconds)

    async def start(self, stack: AsyncExitStack) -> None:
        """Follow the bucket until ``stack`` closes; returns once the current values are in."""
        task = asyncio.create_task(self.run(), name=f"mirror:{self.bucket._name}")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)
        await self.ready()
