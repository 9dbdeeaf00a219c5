"""The vector index port and its embedded backend, Qdrant Edge (the Qdrant engine in-process).

Each memory has two dense (cosine) keys, its text and (for short turns) its context, and one
sparse BM25 vector (Qdrant's tokenizer and stemmer) of its context, or of its text when it has
none. One sparse key, not two: IDF statistics are kept per vector name, so BM25 scores of two
keys would not be comparable, and taking the better of them ranked worse (LoCoMo dev R@10 0.826
against 0.846 in an offline replica). IDF is the cube's own, counted at query time (see
``EdgeIndex.cube_idf``), not the shard's: a cube's ranking must not depend on what other cubes
hold, which would also let one tenant learn word frequencies of another's memories. A hybrid
query scores a memory by its best dense match and its BM25 match and fuses the two linearly (see
``EdgeIndex.hybrid``). All engine calls run on one worker thread so the event loop never blocks
on disk or search.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_edge import (
    Bm25,
    Bm25Config,
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    MatchAny,
    MatchValue,
    Memory,
    Modifier,
    PayloadSchemaType,
    PayloadSelector,
    Point,
    Query,
    QueryBatchRequest,
    QueryRequest,
    RangeDateTime,
    ScrollRequest,
    SparseVector,
    UpdateOperation,
)

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2
from memos_sdk.wire import memory_name
from services.common import states, validation
from services.common.errors import InvalidArgument
from services.common.places import place_key

from .live_records import LiveRecords
from .records import LIVE_IN, RECORD_FIELDS, Role
from .terms import COUNTED_FIELDS, TERMS, TermCounts

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
CONTEXT_DENSE = "context_dense"
DENSE_KEYS = (DENSE, CONTEXT_DENSE)
# The shard's directory under the data dir; a new layout gets a new name, and the vault
# rebuilds it by replaying the write log.
INDEX_DIR = "index-v15"
_LAYOUT = re.compile(r"index-v(\d+)")
KEYWORD_FIELDS = (
    "cube",
    "memory_id",
    "role",
    "kind",
    "type",
    "state",
    "speaker",
    "session_id",
    "parents",
    "tags",
    "turns",
    "place",  # places.place_key: the reply to a question is looked up by its place
    LIVE_IN,
)
_HEAD = FieldCondition(key="role", match=MatchValue(Role.HEAD.value))
# Heads counted a turn of the engine's thread (keep_term_counts): about 15 ms, which a search
# that comes meanwhile waits for. The count also fills the mirrored records (live_records.py).
_COUNT_PAGE = 256
_COUNTED_AND_READ = (*COUNTED_FIELDS, *RECORD_FIELDS)


@dataclass(frozen=True, slots=True)
class IndexPoint:
    id: str
    payload: dict[str, Any]
    dense: list[float] | None = None  # None: a point without vectors (tombstone)
    text: str = ""  # indexed for BM25 when dense is set and there is no context_text
    context: list[float] | None = None  # dense vector of context_text
    context_text: str = ""  # indexed for BM25 in place of text
    keep_vectors: bool = False  # replace the payload of a stored point, leave its vectors


def memory_filter(
    cube_id: str, role: Role, spec: vault_pb2.MemoryFilter | None = None, **exact: str
) -> Filter:
    """The tenant boundary is here: every condition set starts with the cube.

    Heads are filtered to the states ``spec`` names, or to the live states when it names none,
    and to the kinds it names, or to plaintext. The live plaintext heads of a cube are one
    condition (records.LIVE_IN).
    """
    plain = role == Role.HEAD and (spec is None or not (spec.states or spec.kinds))
    must: list[Any] = (
        [FieldCondition(key=LIVE_IN, match=MatchValue(cube_id))]
        if plain
        else [
            FieldCondition(key="cube", match=MatchValue(cube_id)),
            FieldCondition(key="role", match=MatchValue(role.value)),
        ]
    )
    must += [FieldCondition(key=key, match=MatchValue(value)) for key, value in exact.items()]
    if role == Role.HEAD and not plain:
        wanted = spec.states if spec is not None and spec.states else sorted(states.LIVE)
        names = [memory_pb2.MemoryState.Name(s) for s in wanted]
        must.append(FieldCondition(key="state", match=MatchAny(names)))
        kinds = spec.kinds if spec is not None and spec.kinds else [memory_pb2.MEMORY_KIND_PLAINTEXT]
        if any(k not in memory_pb2.MemoryKind.values() or k == 0 for k in kinds):
            raise InvalidArgument(
                "filter.kinds names an unknown kind", reason="INVALID_KIND", field="filter.kinds"
            )
        must.append(
            FieldCondition(key="kind", match=MatchAny([memory_pb2.MemoryKind.Name(k) for k in kinds]))
        )
    if spec is not None:
        if spec.parent_name and validation.memory_name(spec.parent_name, "filter.parent_name")[0] != cube_id:
            raise InvalidArgument(
                f"filter.parent_name is not in cube {cube_id}",
                reason="NAME_OUTSIDE_CUBE",
                field="filter.parent_name",
            )
        must += spec_conditions(spec)
    return Filter(must=must)


def spec_conditions(spec: vault_pb2.MemoryFilter) -> list[Any]:
    """The conditions of a filter's own fields: types, speaker, session, tag, position and event
    times."""
    must: list[Any] = []
    if spec.types:
        names = [memory_pb2.MemoryType.Name(t) for t in spec.types]
        must.append(FieldCondition(key="type", match=MatchAny(names)))
    for key, field in (("speaker", "speaker"), ("session_id", "session_id"), ("parents", "parent_name")):
        if getattr(spec, field):
            must.append(FieldCondition(key=key, match=MatchValue(getattr(spec, field))))
    if spec.tag:
        must.append(FieldCondition(key="tags", match=MatchValue(spec.tag)))
    if spec.position:
        if spec.position < 0 or not spec.session_id:
            raise InvalidArgument(
                "filter.position must be positive and come with filter.session_id",
                reason="INVALID_POSITION",
                field="filter.position",
            )
        at = place_key((spec.session_id, spec.position))
        must.append(FieldCondition(key="place", match=MatchValue(at)))
    after = spec.event_time_after.ToJsonString() if spec.HasField("event_time_after") else None
    before = spec.event_time_before.ToJsonString() if spec.HasField("event_time_before") else None
    if after or before:
        must.append(FieldCondition(key="event_time", range=RangeDateTime(gte=after, lt=before)))
    return must


def also(flt: Filter, *conditions: Any) -> Filter:
    """``flt`` with ``conditions`` too."""
    return Filter(must=[*flt.must, *conditions])


def excluding(flt: Filter, *conditions: Any) -> Filter:
    """``flt`` without the points that match any of ``conditions``."""
    return Filter(must=list(flt.must), must_not=[*(flt.must_not or []), *conditions])


def not_from(flt: Filter, turns: Sequence[str]) -> Filter:
    """``flt`` without the points that carry any of ``turns`` (``records.turn_keys``)."""
    return excluding(flt, FieldCondition(key="turns", match=MatchAny(list(turns)))) if turns else flt


def at_places(flt: Filter, places: Sequence[str]) -> Filter:
    """``flt`` narrowed to the points at any of ``places`` (``places.place_key``)."""
    return also(flt, FieldCondition(key="place", match=MatchAny(list(places))))


def narrowed(flt: Filter, spec: vault_pb2.MemoryFilter) -> Filter | None:
    """``flt`` with the conditions of ``spec``'s own fields too; None when it names none."""
    extra = spec_conditions(spec)
    return also(flt, *extra) if extra else None


def _layout(name: str) -> int | None:
    """The layout number of an index directory's name; None for another name."""
    m = _LAYOUT.fullmatch(name)
    return int(m.group(1)) if m else None


def older_layouts(data_dir: Path) -> list[Path]:
    """The index directories under ``data_dir`` of layouts before ``INDEX_DIR``, newest first."""
    current = _layout(INDEX_DIR)
    assert current is not None
    older = [
        (layout, path)
        for path in (data_dir.iterdir() if data_dir.is_dir() else ())
        if (layout := _layout(path.name)) is not None and layout < current and path.is_dir()
    ]
    return [path for _, path in sorted(older, reverse=True)]


def _scroll(
    shard: EdgeShard, flt: Filter, offset: Any, limit: int, fields: Sequence[str] = ()
) -> tuple[list, Any]:
    """A page of the records ``flt`` selects, with their whole payloads or only ``fields``, and
    the next offset (None after the last)."""
    selector = PayloadSelector.Include(list(fields)) if fields else True
    return shard.scroll(
        ScrollRequest(offset=offset, limit=limit, filter=flt, with_payload=selector, with_vector=False)
    )


# Where indexes of layouts before index-v13 kept each head's usage counts.
_PAYLOAD_USAGE = ("access_count", "last_access_ns", "usage_seq")
_USAGE_TABLE_LAYOUT = 13


def usage_in(path: Path) -> dict[str, tuple[int, int, int]]:
    """The usage counts that the index at ``path``, of a layout before index-v13, kept in its
    heads' payloads: (access count, last access in ns, last usage message folded) by memory
    name, for the heads with any use. The vault now keeps them in a table (usage.py) and takes
    these once. Empty for a later layout, which kept none (not scanned)."""
    layout = _layout(path.name)
    if layout is None or layout >= _USAGE_TABLE_LAYOUT:
        return {}
    shard = EdgeShard.load(str(path))
    try:
        heads = Filter(must=[_HEAD])
        found: dict[str, tuple[int, int, int]] = {}
        offset = None
        while True:
            page, offset = _scroll(shard, heads, offset, 1024, ("cube", "memory_id", *_PAYLOAD_USAGE))
            for record in page:
                fields = record.payload or {}
                if fields.get("usage_seq"):
                    name = memory_name(str(fields["cube"]), str(fields["memory_id"]))
                    found[name] = tuple(int(fields.get(key, 0)) for key in _PAYLOAD_USAGE)  # type: ignore[assignment]
            if offset is None:
                return found
    finally:
        shard.close()


class EdgeIndex:
    """Qdrant Edge shard under ``path``."""

    def __init__(self, path: Path, *, dim: int, bm25_avg_len: float) -> None:
        self._path = path
        self._dim = dim
        self._bm25 = Bm25(Bm25Config(avg_len=bm25_avg_len, language="english"))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge")
        self._shard: EdgeShard | None = None
        self._changed = False  # since the last flush
        # The term counts of plain searches (terms.py); None while they are being counted. A
        # write while they are counted marks its cubes in _dirty, to count again at the end.
        self._counts: TermCounts | None = None
        self._dirty: set[str] | None = None
        self._recount = asyncio.Event()
        self._warm = asyncio.Event()  # set once the terms are counted (and the records mirrored)
        self._live = LiveRecords()  # filled by writes and by the term count
        self._loop: asyncio.AbstractEventLoop | None = None
        # Held from reading heads to writing them back (write log and usage both change heads).
        self.writing = asyncio.Lock()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def path(self) -> Path:
        return self._path

    def built(self) -> bool:
        """Whether the index has been created on disk (it may be empty)."""
        segments = self._path / "segments"
        return segments.is_dir() and any(segments.iterdir())

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._run(self._open)

    def _open(self) -> None:
        config = EdgeConfig(
            vectors={key: EdgeVectorParams(size=self._dim, distance=Distance.Cosine) for key in DENSE_KEYS},
            # No engine IDF: the shard's would count every cube (see cube_idf).
            sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=getattr(Modifier, "None"))},
            # Payloads are read into memory when the index opens. Mapped from disk, the pages of a
            # cube nobody searched for a minute or two can be evicted, and its next search then
            # reads its records from disk: 10-15 ms for 100 candidates instead of about 1.5 ms.
            payload_memory=Memory.Cached,
            # A query's lists run one after another on the calling thread (the engine's worker).
            # The engine's own search pool cost more than it gained: a hand-off per list, and
            # 1.2-1.5 ms of CPU for a three-list batch that takes 1.0 ms on one thread.
            max_search_threads=1,
        )
        if self.built():
            self._shard = EdgeShard.load(str(self._path), config)
            log.info("opened index at %s", self._path)
        else:
            self._path.mkdir(parents=True, exist_ok=True)
            self._shard = EdgeShard.create(str(self._path), config)
            for field in KEYWORD_FIELDS:
                self._shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
            self._shard.update(UpdateOperation.create_field_index("event_time", PayloadSchemaType.Datetime))
            self._shard.update(UpdateOperation.create_field_index(TERMS, PayloadSchemaType.Integer))
            self._counts = TermCounts()  # nothing to count
            log.info("created empty index at %s", self._path)

    async def flush_every(self, seconds: float) -> None:
        """Until cancelled, flush what changed to the segments every ``seconds``. Qdrant Edge
        flushes only when asked; until it does, every change (usage folds too) stays in its
        write-ahead log, which then grows without end and is replayed at each start."""
        while True:
            await asyncio.sleep(seconds)
            if not self._changed:
                continue
            self._changed = False
            try:
                await self.flush()
            except Exception as err:
                self._changed = True
                log.warning("index flush failed (retried in %.0fs): %s", seconds, err)

    async def flush(self) -> None:
        await self._run(self.shard.flush)

    async def close(self) -> None:
        def close() -> None:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
            self._live.clear()

        await self._run(close)
        self._executor.shutdown(wait=True)

    @property
    def shard(self) -> EdgeShard:
        if self._shard is None:
            raise RuntimeError("index is not open")
        return self._shard

    async def retrieve(self, ids: list[str], fields: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """The payloads of the points that exist, by id: whole, or only ``fields``."""

        def retrieve() -> dict[str, dict[str, Any]]:
            selector = PayloadSelector.Include(list(fields)) if fields else True
            records = self.shard.retrieve(ids, with_payload=selector, with_vector=False)
            return {str(r.id): r.payload or {} for r in records}

        return await self._run(retrieve)

    async def retrieve_vectors(self, point_id: str) -> dict[str, list[float]]:
        """The dense vectors of a point by name (DENSE, and CONTEXT_DENSE where it has one)."""

        def retrieve() -> dict[str, list[float]]:
            records = self.shard.retrieve([point_id], with_payload=False, with_vector=list(DENSE_KEYS))
            vector = records[0].vector if records else None
            return {k: list(v) for k, v in vector.items()} if isinstance(vector, dict) else {}

        return await self._run(retrieve)

    async def write(self, upserts: list[IndexPoint], delete_filters: list[Filter]) -> None:
        """Upsert points, then delete by filters; each step is idempotent, so a replay converges."""

        def write() -> None:
            before = self._payloads([p.id for p in upserts], COUNTED_FIELDS)
            points, after, fresh = [], [], []
            for p in upserts:
                if p.keep_vectors:
                    # A new payload for a point that keeps its vectors keeps its BM25 terms too.
                    terms = before.get(p.id, {}).get(TERMS)
                    payload = {**p.payload, TERMS: terms} if terms is not None else p.payload
                    self.shard.update(UpdateOperation.overwrite_payload([p.id], payload))
                    if p.id in before:
                        after.append(payload)
                        self._live.written(uuid.UUID(p.id).int, payload)
                    continue
                vectors: dict[str, Any] = {}
                payload = p.payload
                if p.dense is not None:
                    sparse = self._bm25.embed_document(p.context_text or p.text)
                    vectors = {DENSE: p.dense, SPARSE: sparse}
                    payload = {**payload, TERMS: list(sparse.indices)}
                    if p.context is not None:
                        vectors[CONTEXT_DENSE] = p.context
                points.append(Point(p.id, vectors, payload))
                fresh.append((p.id, payload))
                after.append(payload)
            if points:
                self.shard.update(UpdateOperation.upsert_points(points))
                for point_id, payload in fresh:
                    self._live.written(uuid.UUID(point_id).int, payload)
            deleted: list[dict[str, Any]] = []
            for flt in delete_filters:
                heads = self._scroll_all(also(flt, _HEAD), COUNTED_FIELDS)
                self.shard.update(UpdateOperation.delete_points_by_filter(flt))
                self._live.deleted(r.id.int for r in heads)
                deleted += [r.payload or {} for r in heads]
            if self._counts is not None:
                self._counts.change([*before.values(), *deleted], after)
            elif self._dirty is not None:
                self._dirty.update(p[LIVE_IN] for p in (*before.values(), *after, *deleted) if LIVE_IN in p)

        self._changed = True
        await self._run(self._counting_lost_on_error, write)

    def _counting_lost_on_error(self, fn) -> None:
        """``fn()``; when it fails part way, the term counts and the mirrored records may no
        longer match the index, so they are dropped, and counted and read again. On the
        engine's thread."""
        try:
            fn()
        except BaseException:
            self._counts = self._dirty = None
            self._live.clear()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._recount.set)
            raise

    def _payloads(self, ids: list[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``fields`` of the points that exist among ``ids``, by id. On the engine's thread."""
        if not ids:
            return {}
        records = self.shard.retrieve(
            ids, with_payload=PayloadSelector.Include(list(fields)), with_vector=False
        )
        return {str(r.id): r.payload or {} for r in records}

    def _scroll_page(
        self, flt: Filter, offset: Any, limit: int, fields: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], Any]:
        """A page of the payloads ``flt`` selects (whole, or only ``fields``) and the next
        offset (None after the last). On the engine's thread."""
        records, offset = _scroll(self.shard, flt, offset, limit, fields)
        return [r.payload or {} for r in records], offset

    def _scroll_all(self, flt: Filter, fields: Sequence[str]) -> list[Any]:
        """Every point ``flt`` selects, with its id and ``fields``. On the engine's thread."""
        found: list[Any] = []
        offset = None
        while True:
            page, offset = _scroll(self.shard, flt, offset, 1024, fields)
            found += page
            if offset is None:
                return found

    async def keep_term_counts(self) -> None:
        """Until cancelled: count the BM25 terms of plain searches (terms.py) over the index as
        it is, and again whenever a failed write may have left the counts wrong. Counted a page
        at a time, so searches and writes go on meanwhile; until then, searches count."""
        while True:
            if self._counts is None:  # a new index starts counted (empty)
                started = time.monotonic()
                try:
                    counted = await self._count_terms()
                except Exception as err:  # the engine failed: searches count meanwhile
                    log.warning("counting BM25 terms failed (again in 5s): %s", err)
                    await asyncio.sleep(5)
                    continue
                if counted is None:  # a write failed meanwhile
                    continue
                elapsed = time.monotonic() - started
                log.info("counted the BM25 terms of %d memories in %.1fs", counted, elapsed)
            self._warm.set()
            await self._recount.wait()
            self._recount.clear()

    async def warmed(self, timeout_seconds: float) -> bool:
        """Wait until the first count (``keep_term_counts``) is done: until then a search counts
        its terms in the engine and reads its records there, several times slower. False when
        it was not done in time."""
        try:
            await asyncio.wait_for(self._warm.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True

    async def _count_terms(self) -> int | None:
        """The number of heads counted; None when a write failed meanwhile (counted again)."""
        counts = TermCounts()
        heads = 0

        def begin() -> None:
            self._counts, self._dirty = None, set()

        def page(offset: Any) -> Any:
            nonlocal heads
            found, offset = _scroll(self.shard, Filter(must=[_HEAD]), offset, _COUNT_PAGE, _COUNTED_AND_READ)
            payloads = [r.payload or {} for r in found]
            counts.change((), payloads)
            for record, payload in zip(found, payloads, strict=True):
                self._live.written(record.id.int, payload)
            heads += len(payloads)
            return offset

        def finish() -> bool:
            if self._dirty is None:
                return False
            for cube in self._dirty:
                plain_search = memory_filter(cube, Role.HEAD)  # what TermCounts counts of a cube
                counts.replace_cube(
                    cube, [r.payload or {} for r in self._scroll_all(plain_search, COUNTED_FIELDS)]
                )
            self._counts, self._dirty = counts, None
            return True

        await self._run(begin)
        offset = await self._run(page, None)
        while offset is not None:
            offset = await self._run(page, offset)
        return heads if await self._run(finish) else None

    async def scroll(
        self, flt: Filter, offset: str | None, limit: int, fields: Sequence[str] = ()
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the payloads ``flt`` selects (whole, or only ``fields``) and the next offset."""

        def scroll() -> tuple[list[dict[str, Any]], str | None]:
            payloads, next_offset = self._scroll_page(flt, offset, limit, fields)
            return payloads, (str(next_offset) if next_offset is not None else None)

        return await self._run(scroll)

    async def count(self, flt: Filter) -> int:
        return await self._run(lambda: self.shard.count(CountRequest(exact=True, filter=flt)))

    def cube_idf(
        self, flt: Filter, terms: Sequence[int], whole_cube: str | None = None
    ) -> SparseVector | None:
        """A BM25 query vector with the IDF of the points ``flt`` selects (Qdrant's formula,
        ln(1 + (N - df + 0.5) / (df + 0.5))); terms no such point holds are left out. With
        ``whole_cube``, ``flt`` selects that cube's live plaintext heads, whose numbers are kept
        (terms.py); otherwise they are counted. On the engine's thread."""
        terms = list(dict.fromkeys(terms))
        if whole_cube is not None and self._counts is not None:
            n, frequencies = self._counts.frequencies(whole_cube, terms)
        else:
            n = self.shard.count(CountRequest(exact=True, filter=flt))
            frequencies = [
                self.shard.count(
                    CountRequest(
                        exact=True, filter=also(flt, FieldCondition(key=TERMS, match=MatchValue(term)))
                    )
                )
                for term in terms
            ]
        indices, values = [], []
        for term, df in zip(terms, frequencies, strict=True):
            if df:
                indices.append(term)
                values.append(math.log(1 + (n - df + 0.5) / (df + 0.5)))
        return SparseVector(indices=indices, values=values) if indices else None

    async def nearest_others(
        self, probes: Sequence[tuple[str, list[float], Filter]], *, limit: int
    ) -> list[list[tuple[dict[str, Any], float]]]:
        """For each (point id, dense vector, filter): the ``limit`` closest points but the probe's
        own, best first, each with its ``memory_id`` payload and the cosine of their text
        vectors (the similarity the conflict check judges; context vectors of one stretch of
        talk are alike whatever each turn says). One engine call for all."""

        def nearest() -> list[list[tuple[dict[str, Any], float]]]:
            selector = PayloadSelector.Include(["memory_id"])
            requests = [
                QueryRequest(
                    limit=limit + 1,
                    query=Query.Nearest(vector, using=DENSE),
                    filter=flt,
                    with_payload=selector,
                )
                for _, vector, flt in probes
            ]
            lists = self.shard.query_batch(QueryBatchRequest(requests)) if requests else []
            return [
                [(p.payload or {}, p.score) for p in hits if str(p.id) != point_id][:limit]
                for (point_id, _, _), hits in zip(probes, lists, strict=True)
            ]

        return await self._run(nearest)

    async def hybrid(
        self,
        flt: Filter,
        *,
        dense: list[float] | None,
        text: str,
        limit: int,
        depth: int,
        sparse_weight: float,
        boost: Filter | None = None,
        boost_weight: float = 0.0,
        fields: Sequence[str] = (),
        whole_cube: str | None = None,
    ) -> list[tuple[dict[str, Any], float]]:
        """The best ``limit`` points by ``dense + sparse_weight * bm25 / max(bm25)``, plus
        ``boost_weight`` for the points that match ``boost`` too, with their payloads (whole, or
        only ``fields``).

        The dense score is a point's best over its keys, among the ``depth`` nearest of each key;
        the BM25 score is its sparse key's, among the ``depth`` best.
        A point missing from a dense list gets that list's lowest score (it can be no closer).
        Scores, not ranks, are fused: a clear BM25 match on a rare word or a near-exact dense
        match keeps its margin, which rank fusion throws away.
        With ``boost``, each list is asked again under ``flt`` and ``boost`` together. The
        boosted points are the ones these lists return: a point in a list's ``depth`` best that
        matches ``boost`` is in the boosted list's ``depth`` best too.
        ``whole_cube``: the cube whose live plaintext heads ``flt`` selects, no more, no fewer
        (a plain search); BM25's document frequencies are then read, not counted.
        """

        def lists_for(sparse: Any, where: Filter) -> list[QueryRequest]:
            by_dense = [nearest(dense, key, where) for key in DENSE_KEYS] if dense is not None else []
            return by_dense + ([nearest(sparse, SPARSE, where)] if sparse is not None else [])

        def nearest(vector: Any, using: str, where: Filter) -> QueryRequest:
            return QueryRequest(limit=depth, query=Query.Nearest(vector, using=using), filter=where)

        def query() -> list[tuple[dict[str, Any], float]]:
            terms = self._bm25.embed_query(text).indices if text.strip() else []
            sparse = self.cube_idf(flt, terms, whole_cube) if terms else None
            requests = lists_for(sparse, flt)
            per_filter = len(requests)
            if boost is not None and boost_weight:
                requests += lists_for(sparse, boost)
            lists = self.shard.query_batch(QueryBatchRequest(requests)) if requests else []
            n_dense = len(DENSE_KEYS) if dense is not None else 0
            # Points are keyed by their id's integer: each `p.id` builds a UUID in Python, and a
            # UUID hashes in Python too; for hundreds of points that cost more than the search.
            ids: dict[int, Any] = {}
            dense_best: dict[int, float] = {}
            sparse_best: dict[int, float] = {}
            boosted: set[int] = set()
            # From the lists without the boost, so that the other points score as they would alone.
            floor = math.inf
            for i, found in enumerate(lists):
                is_dense, is_boosted = i % per_filter < n_dense, i >= per_filter
                scores = dense_best if is_dense else sparse_best
                for p in found:
                    point_id = p.id
                    key, score = point_id.int, p.score
                    ids[key] = point_id
                    if score > scores.get(key, -math.inf):
                        scores[key] = score
                    if is_boosted:
                        boosted.add(key)
                    elif is_dense and score < floor:
                        floor = score
            floor = -1.0 if floor == math.inf else floor
            sparse_scale = sparse_weight / (max(sparse_best.values(), default=0.0) or 1.0)
            fused = {
                key: (dense_best.get(key, floor) if dense is not None else 0.0)
                + sparse_scale * sparse_best.get(key, 0.0)
                + (boost_weight if key in boosted else 0.0)
                for key in ids
            }
            best = [ids[key] for key in sorted(fused, key=lambda key: (-fused[key], key))[:limit]]
            records: dict[int, dict[str, Any]] = {}
            if tuple(fields) == RECORD_FIELDS:
                for key in (p.int for p in best):
                    if (mirrored := self._live.get(key)) is not None:
                        records[key] = mirrored
            unread = [p for p in best if p.int not in records]
            if unread:
                selector = PayloadSelector.Include(list(fields)) if fields else True
                for r in self.shard.retrieve(unread, with_payload=selector, with_vector=False):
                    records[r.id.int] = r.payload or {}
            return [(records[p.int], fused[p.int]) for p in best if p.int in records]

        return await self._run(query)
