"""The vector index port and its embedded backend, Qdrant Edge (the Qdrant engine in-process).

Dense (cosine) and sparse BM25 vectors (Qdrant's own tokenizer, stemmer and IDF) per point;
hybrid queries fuse both with reciprocal-rank fusion inside the engine. All engine calls run
on one worker thread so the event loop never blocks on disk or search.
"""

from __future__ import annotations

import asyncio
import logging
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
    Fusion,
    MatchAny,
    MatchValue,
    Modifier,
    PayloadSchemaType,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    RangeDateTime,
    ScrollRequest,
    UpdateOperation,
)

from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2

from .records import Role

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "bm25"
KEYWORD_FIELDS = ("cube", "memory_id", "role", "type", "speaker", "session_id", "tags")


@dataclass(frozen=True, slots=True)
class IndexPoint:
    id: str
    payload: dict[str, Any]
    dense: list[float] | None = None  # None: a point without vectors (tombstone)
    text: str = ""  # indexed for BM25 when dense is set


def memory_filter(
    cube_id: str, role: Role, spec: vault_pb2.MemoryFilter | None = None, **exact: str
) -> Filter:
    """The tenant boundary is here: every condition set starts with the cube."""
    must: list[Any] = [
        FieldCondition(key="cube", match=MatchValue(cube_id)),
        FieldCondition(key="role", match=MatchValue(role.value)),
    ]
    must += [FieldCondition(key=key, match=MatchValue(value)) for key, value in exact.items()]
    if spec is not None:
        if spec.types:
            names = [memory_pb2.MemoryType.Name(t) for t in spec.types]
            must.append(FieldCondition(key="type", match=MatchAny(names)))
        for key in ("speaker", "session_id"):
            if getattr(spec, key):
                must.append(FieldCondition(key=key, match=MatchValue(getattr(spec, key))))
        if spec.tag:
            must.append(FieldCondition(key="tags", match=MatchValue(spec.tag)))
        after = spec.event_time_after.ToJsonString() if spec.HasField("event_time_after") else None
        before = spec.event_time_before.ToJsonString() if spec.HasField("event_time_before") else None
        if after or before:
            must.append(FieldCondition(key="event_time", range=RangeDateTime(gte=after, lt=before)))
    return Filter(must=must)


class EdgeIndex:
    """Qdrant Edge shard under ``path``. ``created`` tells whether it started empty (replay needed)."""

    def __init__(self, path: Path, *, dim: int, bm25_avg_len: float) -> None:
        self._path = path
        self._dim = dim
        self._bm25 = Bm25(Bm25Config(avg_len=bm25_avg_len, language="english"))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge")
        self._shard: EdgeShard | None = None
        self.created = False

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        config = EdgeConfig(
            vectors={DENSE: EdgeVectorParams(size=self._dim, distance=Distance.Cosine)},
            sparse_vectors={SPARSE: EdgeSparseVectorParams(modifier=Modifier.Idf)},
        )
        segments = self._path / "segments"
        if segments.exists() and any(segments.iterdir()):
            self._shard = EdgeShard.load(str(self._path), config)
            log.info("opened index at %s", self._path)
        else:
            self._path.mkdir(parents=True, exist_ok=True)
            self._shard = EdgeShard.create(str(self._path), config)
            for field in KEYWORD_FIELDS:
                self._shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
            self._shard.update(UpdateOperation.create_field_index("event_time", PayloadSchemaType.Datetime))
            self.created = True
            log.info("created empty index at %s", self._path)

    async def close(self) -> None:
        def close() -> None:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None

        await self._run(close)
        self._executor.shutdown(wait=True)

    @property
    def shard(self) -> EdgeShard:
        if self._shard is None:
            raise RuntimeError("index is not open")
        return self._shard

    async def retrieve(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        def retrieve() -> dict[str, dict[str, Any]]:
            records = self.shard.retrieve(ids, with_payload=True, with_vector=False)
            return {str(r.id): r.payload or {} for r in records}

        return await self._run(retrieve)

    async def retrieve_vectors(self, point_id: str) -> list[float] | None:
        def retrieve() -> list[float] | None:
            records = self.shard.retrieve([point_id], with_payload=False, with_vector=[DENSE])
            vector = records[0].vector if records else None
            return list(vector[DENSE]) if isinstance(vector, dict) and DENSE in vector else None

        return await self._run(retrieve)

    async def write(self, upserts: list[IndexPoint], delete_filters: list[Filter]) -> None:
        """Upsert points, then delete by filters; each step is idempotent, so a replay converges."""

        def write() -> None:
            points = []
            for p in upserts:
                vectors: dict[str, Any] = {}
                if p.dense is not None:
                    vectors = {DENSE: p.dense, SPARSE: self._bm25.embed_document(p.text)}
                points.append(Point(p.id, vectors, p.payload))
            if points:
                self.shard.update(UpdateOperation.upsert_points(points))
            for flt in delete_filters:
                self.shard.update(UpdateOperation.delete_points_by_filter(flt))

        await self._run(write)

    async def scroll(
        self, flt: Filter, offset: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        def scroll() -> tuple[list[dict[str, Any]], str | None]:
            records, next_offset = self.shard.scroll(
                ScrollRequest(offset=offset, limit=limit, filter=flt, with_payload=True, with_vector=False)
            )
            return [r.payload or {} for r in records], (str(next_offset) if next_offset is not None else None)

        return await self._run(scroll)

    async def count(self, flt: Filter) -> int:
        return await self._run(lambda: self.shard.count(CountRequest(exact=True, filter=flt)))

    async def hybrid(
        self, flt: Filter, *, dense: list[float] | None, text: str, limit: int, prefetch: int, rrf_k: int
    ) -> list[tuple[dict[str, Any], float]]:
        """Dense and BM25 candidates (each ``prefetch`` deep) fused by RRF; either side may be absent."""

        def query() -> list[tuple[dict[str, Any], float]]:
            sides = []
            if dense is not None:
                sides.append(Prefetch(limit=prefetch, query=Query.Nearest(dense, using=DENSE), filter=flt))
            sparse = self._bm25.embed_query(text) if text.strip() else None
            if sparse is not None and sparse.indices:
                sides.append(Prefetch(limit=prefetch, query=Query.Nearest(sparse, using=SPARSE), filter=flt))
            if not sides:
                return []
            request = QueryRequest(
                limit=limit, prefetches=sides, query=Fusion.Rrf(k=rrf_k), filter=flt, with_payload=True
            )
            return [(p.payload or {}, float(p.score)) for p in self.shard.query(request)]

        return await self._run(query)
