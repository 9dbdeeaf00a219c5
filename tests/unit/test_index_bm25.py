"""BM25 in the vault's index: one sparse key a memory, its context where it has one."""

from __future__ import annotations

import numpy as np
from qdrant_edge import FieldCondition, Filter, MatchValue

from services.vault.index import EdgeIndex, IndexPoint

CUBE = Filter(must=[FieldCondition(key="cube", match=MatchValue("c"))])


def _point(i: int, text: str, context_text: str = "") -> IndexPoint:
    rng = np.random.default_rng(i)
    vector = rng.normal(size=8).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return IndexPoint(
        f"00000000-0000-0000-0000-{i:012d}",
        {"cube": "c", "memory_id": str(i)},
        dense=vector.tolist(),
        text=text,
        context=vector.tolist() if context_text else None,
        context_text=context_text,
    )


async def _bm25(index: EdgeIndex, text: str) -> dict[str, float]:
    found = await index.hybrid(CUBE, dense=None, text=text, limit=10, depth=10, sparse_weight=1.0)
    return {p["memory_id"]: s for p, s in found}


async def test_a_short_reply_is_found_by_the_words_around_it(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    await index.write(
        [
            _point(1, "When did you adopt the greyhound?"),
            _point(2, "Yes, last Friday!", "When did you adopt the greyhound? Yes, last Friday!"),
            _point(3, "The weather was lovely at the lake."),
        ],
        [],
    )
    scores = await _bm25(index, "greyhound adopted")
    assert set(scores) == {"1", "2"}
    await index.close()


async def test_scores_of_text_and_context_keys_are_on_one_scale(tmp_path):
    # Two memories indexed under the same words, one as its text, one as its context, score the
    # same: Qdrant keeps IDF statistics per sparse vector name, so two sparse keys would not.
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    words = "the pottery class on saturday"
    await index.write(
        [
            _point(1, words),
            _point(2, "It was fun.", words),
            *(_point(10 + i, f"unrelated note number {i} about pottery") for i in range(5)),
        ],
        [],
    )
    scores = await _bm25(index, "pottery class saturday")
    assert scores["1"] == scores["2"] == max(scores.values())
    await index.close()


def _in(cube: str, i: int, text: str) -> IndexPoint:
    point = _point(i, text)
    return IndexPoint(point.id, {"cube": cube, "memory_id": str(i)}, dense=point.dense, text=text)


async def test_a_cubes_scores_do_not_depend_on_other_cubes(tmp_path):
    # IDF is counted in the cube searched: what another tenant stores changes neither the order
    # nor the scores (which would otherwise tell word frequencies of its memories).
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    await index.write(
        [
            _in("c", 1, "the pottery class on saturday"),
            _in("c", 2, "a long walk by the lake on saturday"),
            _in("c", 3, "pottery again"),
        ],
        [],
    )
    before = await _bm25(index, "pottery saturday lake")
    await index.write([_in("other", 100 + i, f"pottery pottery workshop {i}") for i in range(20)], [])
    assert await _bm25(index, "pottery saturday lake") == before
    await index.close()


async def test_a_word_only_other_cubes_hold_matches_nothing(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    await index.write([_in("c", 1, "a quiet evening"), _in("other", 2, "zeppelin rides")], [])
    assert await _bm25(index, "zeppelin") == {}
    await index.close()


async def test_a_new_header_keeps_the_words_counted(tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=8, bm25_avg_len=20.0)
    await index.open()
    first = _in("c", 1, "the pottery class on saturday")
    await index.write([first, _in("c", 2, "a walk by the lake")], [])
    relabelled = IndexPoint(first.id, {"cube": "c", "memory_id": "1", "tags": ["art"]}, keep_vectors=True)
    await index.write([relabelled], [])
    assert set(await _bm25(index, "pottery")) == {"1"}
    await index.close()
