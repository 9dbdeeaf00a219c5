"""Rebuilding the index from the write log, safe to interrupt.

Before the vault creates an index (a new layout, or a lost data directory) it writes a marker
beside it with the log sequence up to which writes had been applied, and their events published,
before. While the marker is there, every start replays the whole log into the index again (a
replay converges) and publishes no event for those writes. Once the replay has passed that
sequence, the index is flushed, the directories of older layouts are deleted and the marker
removed. Usage counts live beside the index (usage.py) and outlive it; an index of a layout
that kept them in its payloads hands them over first. A crash at any point leaves either a
complete index or a marker that starts the rebuild over; never an index that misses writes the
consumer has already acked, nor a stale older layout that a downgraded vault would take for
current.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.common.bus import VAULT_CONSUMER, Stream
from services.common.durable import write_durably

from .index import EdgeIndex, older_layouts, usage_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rebuild:
    marker: Path
    # Writes up to this log sequence were applied, and announced, before the rebuild.
    published_until: int
    # The usage counts the index of the layout before kept in its payloads, by memory name
    # (index.usage_in): for the usage table to take.
    usage: dict[str, tuple[int, int, int]]

    async def finish(self, index: EdgeIndex) -> None:
        """The replay has passed ``published_until``: the index stands on its own."""
        await index.flush()
        for old in older_layouts(self.marker.parent):
            await asyncio.to_thread(shutil.rmtree, old)
            log.info("deleted %s, the index of an older layout", old)
        self.marker.unlink(missing_ok=True)
        log.info("index rebuilt from the write log")


async def pending(index: EdgeIndex, js: JetStreamContext) -> Rebuild | None:
    """The rebuild ``index`` needs, started now when it has never been built; None when it is
    whole."""
    marker = index.path.with_name(index.path.name + ".rebuild")
    older = older_layouts(marker.parent)
    if not marker.exists():
        if index.built():
            return None
        try:
            published_until = (await js.consumer_info(Stream.WRITES, VAULT_CONSUMER)).ack_floor.stream_seq
        except NotFoundError:
            published_until = 0  # a new log
        if not published_until and not older:
            return None  # a new vault: nothing was applied before
        write_durably(marker, json.dumps({"published_until": published_until}).encode())
    published_until = int(json.loads(marker.read_text())["published_until"])
    usage = await asyncio.to_thread(usage_in, older[0]) if older else {}
    log.info(
        "rebuilding the index from the write log: writes up to %d publish no events again; "
        "the layout before kept the usage of %d memories",
        published_until,
        len(usage),
    )
    return Rebuild(marker, published_until, usage)
