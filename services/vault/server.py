"""VaultService: reads straight from the index, writes through the write log."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import AsyncExitStack

from qdrant_edge import Filter

from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from memos_sdk.wire import Bucket
from services.common import places, validation
from services.common.access import cube_id_at, field_at, memory_cube_at, reads, writes
from services.common.buckets import open_bucket
from services.common.bus import open_jetstream, wait_applied
from services.common.clock import now_timestamp
from services.common.embedder import Embedder, open_embedder
from services.common.errors import Aborted, InvalidArgument, NotFound
from services.common.grpc_host import Component, Registration
from services.common.injection import relabel
from services.common.kvmirror import KvMirror
from services.common.pagination import PageTokens
from services.common.redaction import RedactionPolicies
from services.common.sealing import Erased, SubjectKeys
from services.common.tasks import run_until_closed
from services.common.writes import publish_write, write_version

from . import records
from .applier import Applier
from .index import (
    CONTEXT_DENSE,
    DENSE,
    INDEX_DIR,
    EdgeIndex,
    at_places,
    memory_filter,
    narrowed,
)
from .rebuild import pending
from .records import Role
from .settings import VaultSettings
from .usage import USAGE_FILE, UsageFolder, UsageTable

log = logging.getLogger(__name__)

MAX_QUERY_LIMIT = 200
MAX_BATCH_GET = 1000
MAX_QUERY_TEXT_CHARS = 4096
UPDATABLE_PATHS = {"text", "tags", "labels", "event_time", "speaker"}


class VaultServicer(vault_pb2_grpc.VaultServiceServicer):
    def __init__(
        self,
        settings: VaultSettings,
        index: EdgeIndex,
        js,
        embedder: Embedder,
        keys: SubjectKeys,
        usage: UsageTable,
        policies: RedactionPolicies,
    ) -> None:
        self._policies = policies
        self._usage = usage
        self._settings = settings
        self._index = index
        self._js = js
        self._embedder = embedder
        self._keys = keys
        self._tokens = PageTokens(settings.page_token_secret)

    def _readable(self, payloads: list[dict]) -> list[memory_pb2.Memory]:
        """The records that can be opened (records.readable), each with its usage."""
        memories = records.readable(payloads, self._keys)
        for memory in memories:
            self._usage.fill(memory)
        return memories

    async def _head(self, name: str) -> memory_pb2.Memory:
        cube_id, memory_id = validation.memory_name(name)
        found = await self._index.retrieve([records.head_id(cube_id, memory_id)])
        fields = next(iter(found.values()), None)
        readable = self._readable([fields]) if fields else []
        if not readable or fields.get("role") != Role.HEAD or fields.get("cube") != cube_id:
            raise NotFound(f"memory {name} does not exist", reason="MEMORY_NOT_FOUND", name=name)
        return readable[0]

    async def GetMemory(self, request, context):
        return await self._head(request.name)

    async def BatchGetMemories(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        if len(request.names) > MAX_BATCH_GET:
            raise InvalidArgument(f"at most {MAX_BATCH_GET} names", reason="TOO_MANY_NAMES", field="names")
        ids = []
        for name in request.names:
            name_cube, memory_id = validation.memory_name(name)
            if name_cube != cube_id:
                raise InvalidArgument(f"{name} is not in cube {cube_id}", reason="NAME_OUTSIDE_CUBE")
            ids.append(records.head_id(cube_id, memory_id))
        found = await self._index.retrieve(ids)
        memories = []
        for name, point_id in zip(request.names, ids, strict=True):
            fields = found.get(point_id)
            readable = self._readable([fields]) if fields else []
            if readable and fields.get("role") == Role.HEAD and fields.get("cube") == cube_id:
                memories.append(readable[0])
            elif not request.allow_missing:
                raise NotFound(f"memory {name} does not exist", reason="MEMORY_NOT_FOUND", name=name)
        return vault_pb2.BatchGetMemoriesResponse(memories=memories)

    async def ListMemories(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        size = validation.page_size(request.page_size, default=100, maximum=1000)
        query = cube_id.encode() + b"\0" + request.filter.SerializeToString(deterministic=True)
        offset = self._tokens.decode(request.page_token, query)
        flt = memory_filter(cube_id, Role.HEAD, request.filter)
        payloads, next_offset = await self._index.scroll(flt, offset, size)
        return vault_pb2.ListMemoriesResponse(
            memories=self._readable(payloads),
            next_page_token=self._tokens.encode(query, next_offset) if next_offset else "",
            total_size=await self._index.count(flt),
        )

    async def Query(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        if request.limit < 0 or request.limit > MAX_QUERY_LIMIT:
            raise InvalidArgument(f"limit must be 0..{MAX_QUERY_LIMIT}", reason="INVALID_LIMIT")
        if len(request.text) > MAX_QUERY_TEXT_CHARS:
            raise InvalidArgument(
                f"text longer than {MAX_QUERY_TEXT_CHARS} characters", reason="QUERY_TOO_LONG"
            )
        if request.embedding and len(request.embedding) != self._embedder.dim:
            raise InvalidArgument(
                f"embedding has {len(request.embedding)} dimensions, the index {self._embedder.dim}",
                reason="EMBEDDING_DIMENSION_MISMATCH",
            )
        limit = request.limit or 20
        text, dense, exclude = request.text, list(request.embedding) or None, None
        if request.similar_to:
            if text or dense:
                raise InvalidArgument("give similar_to or text and embedding, not both", reason="MIXED_QUERY")
            like = await self._head(request.similar_to)
            if like.cube_id != cube_id:
                raise InvalidArgument(f"{like.name} is not in cube {cube_id}", reason="NAME_OUTSIDE_CUBE")
            point_id = records.head_id(cube_id, like.memory_id)
            # Dense only: the scores are then plain cosines, which callers can compare to thresholds.
            text, dense = "", (await self._index.retrieve_vectors(point_id)).get(DENSE)
            exclude = like.memory_id
        if not dense and not text.strip():
            raise InvalidArgument("give text, an embedding, or both", reason="EMPTY_QUERY")
        if not 0 <= request.boost_weight <= 1:
            raise InvalidArgument("boost_weight must be 0..1", reason="INVALID_BOOST", field="boost_weight")
        for field in ("replies", "questions"):
            if not 0 <= getattr(request, field) <= MAX_QUERY_LIMIT:
                raise InvalidArgument(
                    f"{field} must be 0..{MAX_QUERY_LIMIT}", reason=f"INVALID_{field.upper()}", field=field
                )
        if request.boost.states or request.boost.kinds:
            raise InvalidArgument(
                "boost may not name states or kinds (filter does)", reason="INVALID_BOOST", field="boost"
            )
        flt = memory_filter(cube_id, Role.HEAD, request.filter)
        hits = await self._index.hybrid(
            flt,
            dense=dense,
            text=text,
            limit=limit + (exclude is not None),
            # Dense alone, a point's score is its best over its keys, and the best `limit` overall
            # are among each key's `limit` nearest: no deeper lists are needed (the lifecycle's
            # conflict check asks this for every new memory).
            depth=max(limit, self._settings.search_depth) if text.strip() else limit + (exclude is not None),
            sparse_weight=self._settings.sparse_weight,
            boost=narrowed(flt, request.boost),
            boost_weight=request.boost_weight,
            fields=records.RECORD_FIELDS,
            whole_cube=None if request.filter.ByteSize() else cube_id,
        )
        # Opened straight into the reply: results built apart are copied twice more (0.5 ms a search).
        response = vault_pb2.QueryResponse()
        for p, s in hits:
            if len(response.results) == limit:
                break
            if "record" not in p or p.get("memory_id") == exclude:
                continue
            result = response.results.add(score=s)
            try:
                records.read_into(result.memory, p, self._keys)
                self._usage.fill(result.memory)
            except Erased:
                del response.results[-1]
        found = [r.memory for r in response.results]
        replies, questions = await self._exchanges(flt, found, request.replies, request.questions)
        response.replies.extend(replies)
        response.questions.extend(questions)
        return response

    async def _exchanges(
        self, flt: Filter, found: list[memory_pb2.Memory], replies: int, questions: int
    ) -> tuple[list[memory_pb2.Memory], list[memory_pb2.Memory]]:
        """The memories that ``flt`` selects said right after each of the first ``replies``
        memories of ``found`` that asks, and the questions that the first ``questions`` answer
        (see QueryRequest), leaving out those ``found`` holds; read in one scroll."""
        have = {at for m in found if (at := places.place(m))}
        after = {
            nxt
            for m in found[:replies]
            if places.asks(m) and (at := places.place(m)) and (nxt := places.after(at)) not in have
        }
        answered_by = {
            before: m for m in found[:questions] if (before := places.turn_before(m)) and before not in have
        }
        if not after and not answered_by:
            return [], []
        keys = sorted({places.place_key(at) for at in (*after, *answered_by)})
        payloads, _ = await self._index.scroll(at_places(flt, keys), None, len(keys), records.RECORD_FIELDS)
        said_after, asked = [], []
        for memory in self._readable(payloads):
            at = places.place(memory)
            if at in after:
                said_after.append(memory)
            if at in answered_by and places.asks_for(memory, answered_by[at]):
                asked.append(memory)
        return said_after, asked

    async def UpdateMemory(self, request, context):
        request_id = validation.request_id(request.request_id) or uuid.uuid4().hex
        paths = set(request.update_mask.paths)
        if not paths:
            raise InvalidArgument("update_mask names no field", reason="EMPTY_UPDATE_MASK")
        if unknown := paths - UPDATABLE_PATHS:
            raise InvalidArgument(
                f"fields {sorted(unknown)} cannot be updated; allowed: {sorted(UPDATABLE_PATHS)}",
                reason="FIELD_NOT_UPDATABLE",
            )
        current = await self._head(request.memory.name)
        if request.expected_version and request.expected_version != current.version:
            raise Aborted(
                f"{current.name} is at version {current.version}, not {request.expected_version}",
                reason="VERSION_MISMATCH",
                current_version=current.version,
            )
        updated = memory_pb2.Memory()
        updated.CopyFrom(current)
        request.update_mask.MergeMessage(
            request.memory, updated, replace_message_field=True, replace_repeated_field=True
        )
        redactor = self._policies.for_cube(current.cube_id)
        updated.text, updated.speaker = redactor.redact(updated.text), redactor.redact(updated.speaker)
        if not updated.text.strip():
            raise InvalidArgument("text must not be empty", reason="EMPTY_TEXT")
        relabel(updated)
        updated.version = current.version + 1
        updated.update_time.CopyFrom(now_timestamp())
        updated.ClearField("state_change")  # set only on versions that changed state
        updated.provenance.request_id = request_id
        if updated.text != current.text:
            # The context was read around the old words; the new text stands alone.
            updated.index_context = ""
            embedding, context = (await self._embedder.embed([updated.text]))[0].tolist(), []
        else:
            vectors = await self._index.retrieve_vectors(records.head_id(current.cube_id, current.memory_id))
            embedding = vectors.get(DENSE, [])
            context = vectors.get(CONTEXT_DENSE, []) if updated.index_context else []
        put = commands_pb2.PutMemory(memory=updated, embedding=embedding, context_embedding=context)
        await write_version(
            self._js,
            self._keys,
            put,
            request_id=request_id,
            wait_applied_seconds=self._settings.wait_applied_timeout_seconds,
        )
        stored = await self._head(updated.name)
        if stored.version != updated.version or stored.provenance.request_id != request_id:
            raise Aborted(f"a concurrent update of {updated.name} won; re-read and retry", reason="CONFLICT")
        return stored

    async def DeleteMemory(self, request, context):
        validation.request_id(request.request_id)
        current = await self._head(request.name)
        command = commands_pb2.WriteCommand(delete=commands_pb2.DeleteMemoryCommand(name=current.name))
        seq, _ = await publish_write(
            self._js, current.cube_id, command, msg_id=f"{current.name}/delete/v{current.version}"
        )
        await wait_applied(self._js, seq, timeout_seconds=self._settings.wait_applied_timeout_seconds)
        return vault_pb2.DeleteMemoryResponse(name=current.name, version=current.version)

    async def ListVersions(self, request, context):
        head = await self._head(request.name)
        size = validation.page_size(request.page_size, default=20, maximum=100)
        offset = self._tokens.decode(request.page_token, request.name.encode()) or 0
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("page_token is malformed", reason="INVALID_PAGE_TOKEN")
        older, cursor = [], None
        while True:
            flt = memory_filter(head.cube_id, Role.VERSION, memory_id=head.memory_id)
            payloads, cursor = await self._index.scroll(flt, cursor, 256)
            older += self._readable(payloads)
            if cursor is None:
                break
        versions = [head, *sorted(older, key=lambda m: m.version, reverse=True)]
        page = versions[offset : offset + size]
        more = offset + size < len(versions)
        return vault_pb2.ListVersionsResponse(
            versions=page,
            next_page_token=self._tokens.encode(request.name.encode(), offset + size) if more else "",
        )


# The vault checks the caller's role on the cube named in every request itself (a scheduler or
# lifecycle passes its caller's token on), and every query is confined to that cube.
ACCESS = {
    "GetMemory": reads(memory_cube_at(), field_at("name")),
    "BatchGetMemories": reads(cube_id_at()),
    "ListMemories": reads(cube_id_at()),
    "Query": reads(cube_id_at()),
    "UpdateMemory": writes(memory_cube_at("memory.name"), field_at("memory.name")),
    "DeleteMemory": writes(memory_cube_at(), field_at("name")),
    "ListVersions": reads(memory_cube_at(), field_at("name")),
}


async def setup(stack: AsyncExitStack, settings: VaultSettings) -> Component:
    js = await open_jetstream(stack, settings.nats_url, "vault")
    embedder = open_embedder(stack, settings)
    index = EdgeIndex(
        settings.data_dir / INDEX_DIR, dim=settings.embed_dim, bm25_avg_len=settings.bm25_avg_len
    )
    rebuild = await pending(index, js)  # decided before the index is opened, which creates it
    await index.open()
    stack.push_async_callback(index.close)
    run_until_closed(stack, lambda: index.flush_every(settings.index_flush_seconds), "index-flush")
    run_until_closed(stack, index.keep_term_counts, "term-counts")
    consumers = dict(batch_size=settings.apply_batch_size, ack_wait_seconds=settings.apply_ack_wait_seconds)
    keys = await SubjectKeys.start(stack, js)
    usage = await asyncio.to_thread(UsageTable.open, settings.data_dir / USAGE_FILE)
    stack.callback(usage.close)
    if rebuild is not None and (taken := await asyncio.to_thread(usage.take_missing, rebuild.usage)):
        log.info("took the usage counts of %d memories from the index of the layout before", taken)
    writes = await Applier(
        js, index, keys, usage, rebuild=rebuild, neighbours=settings.created_neighbours, **consumers
    ).worker()
    folds = await UsageFolder(
        js, index, usage, linger_seconds=settings.usage_fold_seconds, **consumers
    ).worker()

    async def stop() -> None:
        await asyncio.gather(writes.stop(), folds.stop())

    policies = KvMirror(await open_bucket(js, Bucket.POLICIES))
    await policies.start(stack)
    # Serving (healthy) only once searches run at their speed: the first searches after a start
    # would otherwise take 40-70 ms instead of 15-20 on 100,000 memories (docs/benchmarks.md).
    if not await index.warmed(settings.warm_up_timeout_seconds):
        log.warning(
            "the index is still counting its terms after %.0fs; serving meanwhile",
            settings.warm_up_timeout_seconds,
        )
    servicer = VaultServicer(settings, index, js, embedder, keys, usage, RedactionPolicies(policies))
    return Component(
        registrations=[
            Registration.of(
                vault_pb2.DESCRIPTOR,
                "VaultService",
                vault_pb2_grpc.add_VaultServiceServicer_to_server,
                servicer,
                ACCESS,
            )
        ],
        background=[writes.run, folds.run],
        on_stop=stop,
    )
