"""Dense-only hybrid queries need lists no deeper than their limit (the vault's similar_to path)."""

from __future__ import annotations

import numpy as np
from qdrant_edge import FieldCondition, Filter, MatchValue

from services.vault.index import EdgeIndex, IndexPoint


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 32)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def test_the_best_by_either_key_are_found_with_lists_as_deep_as_the_limit(tmp_path):
    rng = np.random.default_rng(7)
    index = EdgeIndex(tmp_path / "index", dim=32, bm25_avg_len=20.0)
    await index.open()
    dense, context = _unit(rng, 300), _unit(rng, 300)
    points = [
        IndexPoint(
            f"00000000-0000-0000-0000-{i:012d}",
            {"cube": "c", "memory_id": str(i)},
            dense=dense[i].tolist(),
            text=f"item {i}",
            context=context[i].tolist(),
            context_text=f"around item {i}",
        )
        for i in range(300)
    ]
    await index.write(points, [])
    cube = Filter(must=[FieldCondition(key="cube", match=MatchValue("c"))])
    for query in _unit(rng, 10):
        kwargs = dict(dense=query.tolist(), text="", limit=5, sparse_weight=0.6)
        shallow = await index.hybrid(cube, depth=5, **kwargs)
        deep = await index.hybrid(cube, depth=100, **kwargs)
        assert [(p["memory_id"], round(s, 5)) for p, s in shallow] == [
            (p["memory_id"], round(s, 5)) for p, s in deep
        ]
        best = np.maximum(dense @ query, context @ query)
        assert [int(p["memory_id"]) for p, _ in deep] == list(np.argsort(-best)[:5])


async def test_nearest_others_are_the_closest_points_but_the_probe_itself_best_first(tmp_path):
    rng = np.random.default_rng(3)
    index = EdgeIndex(tmp_path / "index", dim=32, bm25_avg_len=20.0)
    await index.open()
    vectors = _unit(rng, 20)
    context = _unit(rng, 20)
    context[5] = vectors[0]  # a context alike counts for nothing: the similarity is of the texts
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(20)]
    await index.write(
        [
            IndexPoint(
                ids[i],
                {"cube": "c" if i < 19 else "d", "memory_id": str(i)},
                dense=vectors[i].tolist(),
                context=context[i].tolist(),
            )
            for i in range(20)
        ],
        [],
    )
    cube = Filter(must=[FieldCondition(key="cube", match=MatchValue("c"))])
    alone = Filter(must=[FieldCondition(key="cube", match=MatchValue("d"))])
    found = await index.nearest_others(
        [(ids[0], vectors[0].tolist(), cube), (ids[19], vectors[19].tolist(), alone)], limit=3
    )
    best = vectors[1:19] @ vectors[0]
    expected = [(str(j + 1), float(best[j])) for j in np.argsort(-best)[:3]]
    assert [(p["memory_id"], round(s, 4)) for p, s in found[0]] == [(m, round(s, 4)) for m, s in expected]
    assert found[1] == []
