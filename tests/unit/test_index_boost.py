"""A boost in the vault's hybrid query: a preference for the memories that match it, never a filter."""

from __future__ import annotations

import numpy as np
from google.protobuf import timestamp_pb2
from qdrant_edge import FieldCondition, Filter, MatchValue

from memos.vault.v1 import vault_pb2
from services.vault.index import EdgeIndex, IndexPoint, narrowed

CUBE = Filter(must=[FieldCondition(key="cube", match=MatchValue("c"))])
MAY = vault_pb2.MemoryFilter(
    event_time_after=timestamp_pb2.Timestamp(seconds=1682899200),  # 1 May 2023
    event_time_before=timestamp_pb2.Timestamp(seconds=1685577600),  # 1 June 2023
)


def _point(i: int, text: str, event_time: str, vector: np.ndarray) -> IndexPoint:
    return IndexPoint(
        f"00000000-0000-0000-0000-{i:012d}",
        {"cube": "c", "memory_id": str(i), "event_time": event_time},
        dense=(vector / np.linalg.norm(vector)).tolist(),
        text=text,
    )


async def _index(tmp_path) -> EdgeIndex:
    index = EdgeIndex(tmp_path / "index", dim=3, bm25_avg_len=20.0)
    await index.open()
    await index.write(
        [
            _point(1, "we went camping by the lake", "2023-03-04T10:00:00Z", np.array([1.0, 0.1, 0.0])),
            _point(2, "camping again, in the mountains", "2023-05-20T10:00:00Z", np.array([1.0, 0.4, 0.0])),
            _point(3, "a quiet week at work", "2023-05-21T10:00:00Z", np.array([0.0, 0.0, 1.0])),
        ],
        [],
    )
    return index


async def _ranked(index: EdgeIndex, **boost) -> list[tuple[str, float]]:
    found = await index.hybrid(
        CUBE, dense=[1.0, 0.0, 0.0], text="camping", limit=10, depth=10, sparse_weight=0.5, **boost
    )
    return [(p["memory_id"], s) for p, s in found]


async def test_a_memory_from_the_named_time_moves_up_by_the_weight(tmp_path):
    index = await _index(tmp_path)
    alone = dict(await _ranked(index))
    boosted = await _ranked(index, boost=narrowed(CUBE, MAY), boost_weight=0.2)
    assert [m for m, _ in await _ranked(index)][:2] == ["1", "2"]
    assert [m for m, _ in boosted][:2] == ["2", "1"]
    scores = dict(boosted)
    assert abs(scores["2"] - alone["2"] - 0.2) < 1e-6
    assert abs(scores["3"] - alone["3"] - 0.2) < 1e-6  # in May too: a boost ignores relevance
    assert scores["1"] == alone["1"]
    await index.close()


async def test_a_boost_keeps_the_other_memories(tmp_path):
    index = await _index(tmp_path)
    boosted = await _ranked(index, boost=narrowed(CUBE, MAY), boost_weight=1.0)
    assert {m for m, _ in boosted} == {"1", "2", "3"}
    await index.close()


async def test_a_boost_naming_nothing_or_weighing_nothing_changes_nothing(tmp_path):
    index = await _index(tmp_path)
    assert narrowed(CUBE, vault_pb2.MemoryFilter()) is None
    alone = await _ranked(index)
    assert await _ranked(index, boost=narrowed(CUBE, MAY), boost_weight=0.0) == alone
    await index.close()
