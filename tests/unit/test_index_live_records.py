"""A search reads the records of live plaintext heads from memory (live_records.py): what it
reads there is what the engine holds, after writes, state changes, rewrites, deletes, a reopen
and a failed write."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from qdrant_edge import FieldCondition, Filter, MatchValue

from memos.vault.v1 import vault_pb2
from services.vault.index import EdgeIndex, IndexPoint, memory_filter
from services.vault.live_records import LiveRecords
from services.vault.records import LIVE_IN, RECORD_FIELDS, Role, with_live_in
from tests.unit.test_index_term_counts import (
    ARCHIVED,
    LIVE,
    PLAINTEXT,
    WORDS,
    _counted,
    _FailingShard,
    _head,
    _text,
)

EVERY_STATE = vault_pb2.MemoryFilter(states=[1, 2, 3, 4, 5, 6, 7])


def _sealed(point: IndexPoint, version: int) -> IndexPoint:
    """The point with record fields of its own version (what records.payload writes)."""
    record = f"record of {point.payload['memory_id']} v{version}"
    payload = {**point.payload, "record": record, "key": f"key-{point.payload['cube']}"}
    return IndexPoint(point.id, payload, dense=point.dense, text=point.text)


def _restated(point: IndexPoint, state: str, version: int) -> IndexPoint:
    record = f"record of {point.payload['memory_id']} v{version}"
    return IndexPoint(
        point.id, with_live_in({**point.payload, "state": state, "record": record}), keep_vectors=True
    )


def _by_id(payloads) -> list[dict]:
    return sorted(payloads, key=lambda p: p["memory_id"])


async def _search(index: EdgeIndex, cube: str, spec: vault_pb2.MemoryFilter | None = None) -> list[dict]:
    hits = await index.hybrid(
        memory_filter(cube, Role.HEAD, spec),
        dense=None,
        text=" ".join(WORDS),
        limit=100,
        depth=100,
        sparse_weight=1.0,
        fields=RECORD_FIELDS,
        whole_cube=None if spec else cube,
    )
    return [payload for payload, _ in hits]


async def _assert_as_the_engine_holds(index: EdgeIndex, *, mirrored: int) -> None:
    for cube in ("a", "b"):
        for spec in (None, EVERY_STATE):
            found = await _search(index, cube, spec)
            ids = [str(uuid.UUID(int=i)) for i in await _ids(index, cube, spec)]
            held = await index.retrieve(ids, RECORD_FIELDS)
            assert _by_id(found) == _by_id(held.values())
    assert len(index._live) == mirrored, "every live plaintext head is read from memory"


async def _ids(index: EdgeIndex, cube: str, spec: vault_pb2.MemoryFilter | None) -> list[int]:
    records = await index._run(index._scroll_all, memory_filter(cube, Role.HEAD, spec), ("memory_id",))
    return [r.id.int for r in records]


async def _live_heads(index: EdgeIndex) -> int:
    return await index.count(
        Filter(must=[FieldCondition(key=LIVE_IN, match=MatchValue("a"))])
    ) + await index.count(Filter(must=[FieldCondition(key=LIVE_IN, match=MatchValue("b"))]))


async def test_searches_read_what_the_engine_holds_through_every_kind_of_write(tmp_path):
    rng = random.Random(11)
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    points = [
        _sealed(_head(rng.choice("ab"), i, _text(rng), rng.choice([LIVE, LIVE, ARCHIVED])), 1)
        for i in range(50)
    ]
    await index.write(points, [])
    await _assert_as_the_engine_holds(index, mirrored=await _live_heads(index))

    # Archived and revived (new headers, same vectors), and rewritten with a new record.
    changes = [_restated(p, rng.choice([LIVE, ARCHIVED]), 2) for p in points[:25]]
    changes += [
        _sealed(_head(p.payload["cube"], int(p.payload["memory_id"]), _text(rng)), 2) for p in points[25:35]
    ]
    await index.write(changes, [])
    await _assert_as_the_engine_holds(index, mirrored=await _live_heads(index))

    # Deleted by filter: one memory, then a whole cube, with a write in the same batch.
    one = Filter(must=[FieldCondition(key="memory_id", match=MatchValue("30"))])
    whole_b = Filter(must=[FieldCondition(key="cube", match=MatchValue("b"))])
    await index.write([_sealed(_head("b", 200, "garden sunset"), 1)], [one, whole_b])
    await _assert_as_the_engine_holds(index, mirrored=await _live_heads(index))
    assert await _search(index, "b") == []
    await index.close()


async def test_an_index_opened_again_reads_its_records_into_memory_as_it_counts(tmp_path):
    rng = random.Random(5)
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    await index.write([_sealed(_head(rng.choice("ab"), i, _text(rng)), 1) for i in range(40)], [])
    await index.close()

    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    assert len(index._live) == 0
    await _assert_as_the_engine_holds(index, mirrored=0)  # read from the engine meanwhile
    keeper = asyncio.create_task(index.keep_term_counts())
    await index.write([_sealed(_head("a", 100 + i, _text(rng)), 1) for i in range(5)], [])
    await _counted(index)
    await _assert_as_the_engine_holds(index, mirrored=45)
    keeper.cancel()
    await index.close()


async def test_a_failed_write_empties_the_mirror_and_the_count_fills_it_again(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    keeper = asyncio.create_task(index.keep_term_counts())
    first = _sealed(_head("a", 1, "pottery class"), 1)
    await index.write([first, _sealed(_head("b", 2, "lake walk"), 1)], [])
    shard = index._shard
    index._shard = _FailingShard(shard)
    with pytest.raises(RuntimeError):
        await index.write([_sealed(_head("a", 1, "pottery garden"), 2)], [])
    assert len(index._live) == 0
    index._shard = shard
    await _counted(index)
    await _assert_as_the_engine_holds(index, mirrored=2)
    assert [p["record"] for p in await _search(index, "a")] == ["record of 1 v1"]
    keeper.cancel()
    await index.close()


def test_only_live_plaintext_heads_are_mirrored():
    live = LiveRecords()
    live.written(1, {LIVE_IN: "a", "memory_id": "m", "record": "r", "key": "k", "cube": "a"})
    live.written(2, {"memory_id": "n", "record": "r", "key": "k", "cube": "a", "state": ARCHIVED})
    assert live.get(1) == {"memory_id": "m", "record": "r", "key": "k"}
    assert live.get(2) is None
    live.written(1, {"memory_id": "m", "record": "r2", "key": "k", "kind": PLAINTEXT})  # no longer live
    assert live.get(1) is None
