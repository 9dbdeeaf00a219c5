"""The index flushes its changes to the segments on its own, so the write-ahead log stays short."""

from __future__ import annotations

import asyncio
import shutil

from qdrant_edge import FieldCondition, Filter, MatchValue

from services.vault.index import EdgeIndex, IndexPoint

CUBE = Filter(must=[FieldCondition(key="cube", match=MatchValue("c"))])


async def _count_without_wal(index_dir, tmp_path) -> int:
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy, ignore=shutil.ignore_patterns("wal"))
    reopened = EdgeIndex(copy, dim=4, bm25_avg_len=8.0)
    await reopened.open()
    try:
        return await reopened.count(CUBE)
    finally:
        await reopened.close()


async def test_changes_reach_the_segments_without_a_close(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=4, bm25_avg_len=8.0)
    await index.open()
    flusher = asyncio.create_task(index.flush_every(0.05))
    try:
        points = [
            IndexPoint(
                f"00000000-0000-0000-0000-{i:012d}", {"cube": "c"}, dense=[1.0, i, 0.0, 0.0], text=f"item {i}"
            )
            for i in range(20)
        ]
        before = await _count_without_wal(tmp_path / "index", tmp_path / "before")
        await index.write(points, [])
        await asyncio.sleep(0.5)
        after = await _count_without_wal(tmp_path / "index", tmp_path / "after")
    finally:
        flusher.cancel()
        await index.close()
    assert (before, after) == (0, 20)
