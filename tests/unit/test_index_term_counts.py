"""BM25 document frequencies kept as the index changes give the IDF the engine counts."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from qdrant_edge import FieldCondition, Filter, MatchValue

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2
from services.common import states
from services.vault.index import EdgeIndex, IndexPoint, memory_filter
from services.vault.records import Role, with_live_in

WORDS = "pottery class lake walk saturday greyhound garden violin paint sunset".split()
LIVE, ARCHIVED = "MEMORY_STATE_ACTIVATED", "MEMORY_STATE_ARCHIVED"
PLAINTEXT, ACTIVATION = "MEMORY_KIND_PLAINTEXT", "MEMORY_KIND_ACTIVATION"


def _id(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def _head(cube: str, i: int, text: str, state: str = LIVE, kind: str = PLAINTEXT) -> IndexPoint:
    vector = np.random.default_rng(i).normal(size=8).astype(np.float32)
    vector /= np.linalg.norm(vector)
    payload = {"cube": cube, "memory_id": str(i), "role": Role.HEAD.value, "state": state, "kind": kind}
    return IndexPoint(_id(i), with_live_in(payload), dense=vector.tolist(), text=text)


def _restated(point: IndexPoint, state: str) -> IndexPoint:
    return IndexPoint(point.id, with_live_in({**point.payload, "state": state}), keep_vectors=True)


async def _idf(index: EdgeIndex, cube: str, *, kept: bool) -> dict[int, float]:
    terms = index._bm25.embed_query(" ".join(WORDS)).indices
    flt = memory_filter(cube, Role.HEAD)
    vector = await index._run(index.cube_idf, flt, terms, cube if kept else None)
    return dict(zip(vector.indices, vector.values, strict=True)) if vector else {}


async def _selected(index: EdgeIndex, cube: str, spec: vault_pb2.MemoryFilter | None = None) -> list[str]:
    found, _ = await index.scroll(memory_filter(cube, Role.HEAD, spec), None, 1000, ("memory_id",))
    return sorted(p["memory_id"] for p in found)


async def _assert_kept_as_counted(index: EdgeIndex) -> None:
    assert index._counts is not None, "the counts are in use"
    spelled_out = vault_pb2.MemoryFilter(states=sorted(states.LIVE), kinds=[memory_pb2.MEMORY_KIND_PLAINTEXT])
    for cube in ("a", "b", "empty"):
        assert await _idf(index, cube, kept=True) == pytest.approx(await _idf(index, cube, kept=False))
        # A plain search's one condition (records.LIVE_IN) selects what the four conditions do.
        assert await _selected(index, cube) == await _selected(index, cube, spelled_out)


async def _counted(index: EdgeIndex) -> None:
    for _ in range(1000):
        if index._counts is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the terms were not counted in 10 s")


def _text(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(1, 4)))


async def test_kept_frequencies_follow_writes_state_changes_and_deletes(tmp_path):
    rng = random.Random(7)
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    points = [
        _head(
            rng.choice("ab"),
            i,
            _text(rng),
            rng.choice([LIVE, LIVE, ARCHIVED]),
            rng.choice([PLAINTEXT, ACTIVATION]),
        )
        for i in range(60)
    ]
    await index.write(points, [])
    await _assert_kept_as_counted(index)

    # Archived, revived, relabelled, rewritten with other words, and a version point on the side.
    changes = [_restated(p, rng.choice([LIVE, ARCHIVED])) for p in points[:30]]
    changes += [_head(p.payload["cube"], int(p.payload["memory_id"]), _text(rng)) for p in points[30:40]]
    version = IndexPoint(
        _id(999), {"cube": "a", "role": Role.VERSION.value}, dense=points[0].dense, text="violin"
    )
    await index.write([*changes, version], [])
    await _assert_kept_as_counted(index)

    # Deleted by filter: one memory, then a whole cube; written and deleted in one batch.
    one = Filter(must=[FieldCondition(key="memory_id", match=MatchValue("41"))])
    whole_b = Filter(must=[FieldCondition(key="cube", match=MatchValue("b"))])
    await index.write([_head("b", 200, "garden sunset")], [one, whole_b])
    await _assert_kept_as_counted(index)
    assert await _idf(index, "b", kept=True) == {}
    await index.close()


async def test_an_index_opened_again_counts_its_terms_in_the_background(tmp_path):
    rng = random.Random(3)
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    await index.write([_head(rng.choice("ab"), i, _text(rng)) for i in range(40)], [])
    await index.close()

    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    assert index._counts is None, "an index with points starts uncounted (searches count)"
    assert await _idf(index, "a", kept=True) == await _idf(index, "a", kept=False)
    assert not await index.warmed(0.05), "the vault does not serve before the first count"
    keeper = asyncio.create_task(index.keep_term_counts())
    # Writes while the counting runs mark their cubes, which are counted again at the end.
    await index.write([_head("a", 100 + i, _text(rng)) for i in range(5)], [])
    assert await index.warmed(10)
    await _counted(index)
    await _assert_kept_as_counted(index)
    keeper.cancel()
    await index.close()


class _FailingShard:
    """The shard, with its upserts failing: a write that stops part way."""

    def __init__(self, shard) -> None:
        self._shard = shard

    def update(self, operation):
        raise RuntimeError("disk full")

    def __getattr__(self, name):
        return getattr(self._shard, name)


async def test_a_failed_write_drops_the_counts_and_counts_again(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    keeper = asyncio.create_task(index.keep_term_counts())
    assert await index.warmed(10), "a new index is counted (empty) at once"
    await index.write([_head("a", 1, "pottery class"), _head("b", 2, "lake walk")], [])
    shard = index._shard
    index._shard = _FailingShard(shard)
    with pytest.raises(RuntimeError):
        await index.write([_head("a", 3, "pottery garden")], [])
    assert index._counts is None
    index._shard = shard
    await _counted(index)
    await index.write([_head("a", 4, "violin")], [])
    await _assert_kept_as_counted(index)
    keeper.cancel()
    await index.close()
