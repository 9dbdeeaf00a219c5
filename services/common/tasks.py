"""Background work tied to an exit stack, and following a stream that may break."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

log = logging.getLogger(__name__)


def run_until_closed(
    stack: AsyncExitStack, work: Callable[[], Awaitable[None]], name: str
) -> asyncio.Task[None]:
    """Run ``work()`` as a task that is cancelled, and waited for, when ``stack`` closes."""
    task = asyncio.create_task(work(), name=name)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return task


async def follow_forever(
    what: str, follow: Callable[[], Awaitable[None]], pause_seconds: float = 0.5
) -> None:
    """Call ``follow()`` again whenever it fails, until cancelled (the bus reconnects by itself;
    a watch or subscription broken meanwhile has to be opened again)."""
    while True:
        try:
            await follow()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("%s failed: %s; following again", what, err)
            await asyncio.sleep(pause_seconds)
