"""Usage counts are taken over only from an index of a layout that kept them in its payloads."""

from __future__ import annotations

from services.vault.index import EdgeIndex, IndexPoint, usage_in

HEAD = {
    "cube": "c",
    "memory_id": "m1",
    "role": "head",
    "access_count": 3,
    "last_access_ns": 7,
    "usage_seq": 2,
}


async def _index_at(path) -> None:
    index = EdgeIndex(path, dim=4, bm25_avg_len=8.0)
    await index.open()
    try:
        await index.write(
            [IndexPoint("00000000-0000-0000-0000-000000000001", HEAD, dense=[1.0, 0, 0, 0], text="x")], []
        )
    finally:
        await index.close()


async def test_an_index_of_a_layout_before_the_usage_table_hands_over_its_counts(tmp_path):
    await _index_at(tmp_path / "index-v12")
    assert usage_in(tmp_path / "index-v12") == {"cubes/c/memories/m1": (3, 7, 2)}


async def test_an_index_of_a_later_layout_is_not_read_for_counts(tmp_path):
    await _index_at(tmp_path / "index-v13")
    assert usage_in(tmp_path / "index-v13") == {}
