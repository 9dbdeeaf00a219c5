"""Payload updates (usage folds) go to the engine in parts, so a search does not wait for all of them."""

from __future__ import annotations

import asyncio

from services.vault.index import SET_FIELDS_PER_CALL, EdgeIndex, IndexPoint


async def test_a_read_passes_between_the_parts_of_a_large_update_and_every_point_is_set(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=4, bm25_avg_len=8.0)
    await index.open()
    try:
        ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(3 * SET_FIELDS_PER_CALL)]
        points = [
            IndexPoint(pid, {"cube": "c"}, dense=[1.0, i, 0.0, 0.0], text=f"item {i}")
            for i, pid in enumerate(ids)
        ]
        await index.write(points, [])

        fold = asyncio.create_task(index.set_fields({pid: {"uses": i} for i, pid in enumerate(ids)}))
        await asyncio.sleep(0)  # the fold's first part is on the engine's thread
        read = await index.retrieve([ids[-1]], fields=("uses",))
        assert "uses" not in read[ids[-1]] and not fold.done()  # the read did not wait for the fold
        await fold
        stored = await index.retrieve(ids, fields=("uses",))
        assert [stored[pid]["uses"] for pid in ids] == list(range(len(ids)))
    finally:
        await index.close()
