"""Applies the write log to the index: durable pull consumer, explicit acks, idempotent commands.

Rules (per memory, in log order):
- put of version N applies when the stored head is version N-1 (none counts as 0); the old
  head becomes a version point. N equal to the stored version is a redelivery: its event is
  published again (deduplicated by ce-id). Anything else is a conflict and is skipped.
- delete replaces the head by a tombstone and drops the version points; puts on a tombstone
  are skipped, so replaying an old write never resurrects a deleted memory.
A command is acked only after its effects are in the index and its event is on the bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from qdrant_edge import FieldCondition, Filter, MatchAny, MatchValue

from memos.events.v1 import events_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2
from memos_sdk.tokens import count_tokens
from memos_sdk.wire import SUBJECT_PREFIX, EventKind, Header, Stream, memory_name
from services.common import states, validation
from services.common.bus import VAULT_CONSUMER, PullWorker, durable_worker
from services.common.errors import InvalidArgument
from services.common.events import publish_event, without_content
from services.common.sealing import Erased, SubjectKeys, subject_key_id
from services.common.telemetry import extract_context

from . import records
from .index import EdgeIndex, IndexPoint, excluding, memory_filter, not_from
from .rebuild import Rebuild
from .records import Role
from .usage import UsageTable, forget_dead

_SUMMARY = memory_pb2.MemoryType.Name(memory_pb2.MEMORY_TYPE_SUMMARY)


def _judged(memory: memory_pb2.Memory) -> bool:
    """Whether the lifecycle judges the memory for conflicts: plaintext that is not a summary
    (a summary restates memories that are judged themselves)."""
    return memory.kind == memory_pb2.MEMORY_KIND_PLAINTEXT and memory.type != memory_pb2.MEMORY_TYPE_SUMMARY


log = logging.getLogger(__name__)
tracer = trace.get_tracer("memos.vault")

SOURCE = "memos/vault"


@dataclass
class _Event:
    cube_id: str
    kind: EventKind
    subject: str
    event_id: str
    payload: Any
    context: Any


@dataclass
class _Batch:
    heads: dict[str, dict[str, Any]]
    upserts: dict[str, IndexPoint] = field(default_factory=dict)
    delete_filters: list[Any] = field(default_factory=list)
    events: list[_Event] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # names: their usage rows go
    erased_in: set[str] = field(default_factory=set)  # cubes: their dead memories' usage rows go


class Applier:
    def __init__(
        self,
        js: JetStreamContext,
        index: EdgeIndex,
        keys: SubjectKeys,
        usage: UsageTable,
        *,
        batch_size: int,
        ack_wait_seconds: float,
        rebuild: Rebuild | None = None,
        neighbours: int = 5,
    ) -> None:
        self._js = js
        self._neighbours = neighbours
        self._index = index
        self._keys = keys
        self._usage = usage
        self._batch_size = batch_size
        self._ack_wait = ack_wait_seconds
        self._rebuild = rebuild
        # Writes up to this log sequence were announced before the rebuild: none is announced again.
        self._published_until = rebuild.published_until if rebuild else 0

    async def worker(self) -> PullWorker:
        """The worker on the write log's durable consumer, rewound for a rebuild (to replay the
        whole log; see ``rebuild``). Stopping it lets the batch in flight finish and be acked.

        A replay publishes no event for the commands applied before it (up to the consumer's ack
        floor when it began): rebuilding the index changes no memory, and subscribers and the
        lifecycle would otherwise see every change again once the bus's duplicate window has
        passed."""
        rewind = self._rebuild is not None
        if self._rebuild and not self._published_until:
            await self._rebuilt()  # nothing to replay
        return await durable_worker(
            self._js,
            Stream.WRITES,
            durable=VAULT_CONSUMER,
            filter_subject=f"{SUBJECT_PREFIX}.writes.>",
            handle=self.apply,
            batch_size=self._batch_size,
            name="write log",
            ack_wait_seconds=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=self._batch_size * 8,
            rewind=rewind,
        )

    async def apply(self, msgs: list[Msg]) -> None:
        await self._apply(msgs)
        if self._rebuild and max(m.metadata.sequence.stream for m in msgs) >= self._published_until:
            await self._rebuilt()

    async def _rebuilt(self) -> None:
        assert self._rebuild is not None
        await self._rebuild.finish(self._index)
        self._rebuild = None

    async def _apply(self, msgs: list[Msg]) -> None:
        commands: list[tuple[Msg, commands_pb2.WriteCommand]] = []
        for msg in msgs:
            command = commands_pb2.WriteCommand()
            try:
                command.ParseFromString(await self._open(msg))
                _check(command)
                if command.HasField("put"):
                    # The index seals the record with its writer's key; a write logged before
                    # writes were sealed has never had that key made.
                    memory = command.put.memory
                    await self._keys.key(
                        subject_key_id(memory.cube_id, memory.provenance.principal), create=True
                    )
            except Erased as err:
                # Its subject was erased: the content is gone for good, and so is the command.
                log.info("skipping write seq=%s of an erased subject (%s)", msg.metadata.sequence.stream, err)
                await msg.ack()
                continue
            except Exception as err:
                log.error("dropping malformed write command seq=%s: %s", msg.metadata.sequence.stream, err)
                await msg.term()
                continue
            commands.append((msg, command))
        if not commands:
            return
        async with self._index.writing:
            heads = sorted({h for _, c in commands if (h := _head_of(c)) is not None})
            batch = _Batch(heads=await self._index.retrieve(heads))
            for msg, command in commands:
                parent = extract_context(msg.headers)
                with tracer.start_as_current_span(
                    "vault.apply", context=parent, kind=trace.SpanKind.CONSUMER
                ):
                    published = len(batch.events)
                    try:
                        if command.HasField("put"):
                            self._put(batch, command.put, parent)
                        elif command.HasField("erase"):
                            self._erase(batch, command.erase)
                        else:
                            self._delete(batch, command.delete.name, parent)
                    except Erased as err:  # a key destroyed meanwhile: that content is gone
                        log.info(
                            "skipping write seq=%s of an erased subject (%s)",
                            msg.metadata.sequence.stream,
                            err,
                        )
                    if msg.metadata.sequence.stream <= self._published_until:
                        del batch.events[published:]
            await self._index.write(list(batch.upserts.values()), batch.delete_filters)
            if batch.deleted:
                await asyncio.to_thread(self._usage.drop, batch.deleted)
            for cube_id in batch.erased_in:
                await forget_dead(self._index, self._usage, cube_id)
        await self._measure_nearest(batch)
        await asyncio.gather(*(self._publish(e) for e in batch.events))
        await asyncio.gather(*(msg.ack() for msg, _ in commands))

    async def _measure_nearest(self, batch: _Batch) -> None:
        """Each new memory's closest neighbours of the same speaker go into its created event:
        the lifecycle's conflict check reads them instead of searching the cube for every new
        memory, and checks only the memories near another."""
        if not self._neighbours:
            return
        probes, events = [], []
        for event in batch.events:
            if event.kind != EventKind.MEMORY_CREATED:
                continue
            memory = event.payload.memory
            point = batch.upserts.get(records.head_id(memory.cube_id, memory.memory_id))
            if point is None or point.dense is None or not _judged(memory):
                continue
            speaker = vault_pb2.MemoryFilter(speaker=memory.speaker)
            # Other pieces and statements of its own turns are no conflict, and summaries are
            # not judged (the lifecycle's rules).
            flt = not_from(memory_filter(memory.cube_id, Role.HEAD, speaker), records.turn_keys(memory))
            flt = excluding(flt, FieldCondition(key="type", match=MatchValue(_SUMMARY)))
            probes.append((point.id, point.dense, flt))
            events.append(event)
        found = await self._index.nearest_others(probes, limit=self._neighbours)
        for event, neighbours in zip(events, found, strict=True):
            created = event.payload
            for payload, score in neighbours:
                name = memory_name(created.memory.cube_id, payload["memory_id"])
                created.neighbours.add(name=name, similarity=score)
            if neighbours:
                created.nearest_similarity = neighbours[0][1]

    async def _open(self, msg: Msg) -> bytes:
        """The command's bytes, unsealed with its subject key when it carries content."""
        key_id = (msg.headers or {}).get(Header.SUBJECT_KEY)
        if not key_id:
            return msg.data
        data = await self._keys.unseal(key_id, msg.data)
        return data

    def _erase(self, batch: _Batch, erase: commands_pb2.EraseCommand) -> None:
        """Drop every point of the subject's memories in the cube: heads, versions, tombstones."""
        batch.erased_in.add(erase.cube_id)
        cube = FieldCondition(key="cube", match=MatchValue(erase.cube_id))
        if erase.whole_cube:
            batch.delete_filters.append(Filter(must=[cube]))
        else:
            if erase.key_ids:
                keyed = FieldCondition(key="key", match=MatchAny(list(erase.key_ids)))
                batch.delete_filters.append(Filter(must=[cube, keyed]))
            ids = [validation.memory_name(n)[1] for n in erase.names]
            if ids:
                named = FieldCondition(key="memory_id", match=MatchAny(ids))
                batch.delete_filters.append(Filter(must=[cube, named]))
        # A put of the same batch must not write back what is being erased.
        for point_id, point in list(batch.upserts.items()):
            if point.payload.get("cube") == erase.cube_id:
                del batch.upserts[point_id]
                batch.heads.pop(point_id, None)
        log.info("erased %s from cube %s", erase.subject or "a subject", erase.cube_id)

    def _put(self, batch: _Batch, put: commands_pb2.PutMemory, parent: Any) -> None:
        memory = put.memory
        memory.tokens = count_tokens(memory.text)  # counted once, not in every search's assembly
        head_id = records.head_id(memory.cube_id, memory.memory_id)
        head = batch.heads.get(head_id)
        stored = int(head["version"]) if head else 0
        if head and head["role"] == Role.TOMBSTONE:
            log.info("skipping write to deleted memory %s", memory.name)
            return
        if memory.version == stored + 1:
            point = self._new_head(batch, put, head)
            if point is None:
                return
            batch.upserts[head_id] = point
            batch.heads[head_id] = point.payload
        elif memory.version != stored or _request_of(head, self._keys) != memory.provenance.request_id:
            log.warning(
                "skipping version %d of %s: stored version is %d", memory.version, memory.name, stored
            )
            return
        batch.events.append(_event_of(memory, parent))

    def _new_head(
        self, batch: _Batch, put: commands_pb2.PutMemory, head: dict[str, Any] | None
    ) -> IndexPoint | None:
        """The head point of the put's version; the old head becomes a version point.

        Usage is the vault's, not the writer's: its event carries the counts the table holds.
        """
        memory = put.memory
        head_id = records.head_id(memory.cube_id, memory.memory_id)
        previous = records.memory_of(head, self._keys) if head else None
        if put.keep_vectors and (
            previous is None or previous.text != memory.text or previous.index_context != memory.index_context
        ):
            log.warning(
                "skipping header-only version %d of %s: its text differs", memory.version, memory.name
            )
            return None
        memory.ClearField("usage")
        self._usage.fill(memory)
        if previous is not None:
            vid = records.version_id(memory.cube_id, memory.memory_id, previous.version)
            batch.upserts[vid] = IndexPoint(vid, records.payload(previous, Role.VERSION, self._keys))
        fields = records.payload(memory, Role.HEAD, self._keys)
        if not put.keep_vectors:
            return IndexPoint(
                head_id,
                fields,
                dense=list(put.embedding),
                text=memory.text,
                context=list(put.context_embedding) if put.context_embedding else None,
                context_text=memory.index_context,
            )
        pending = batch.upserts.get(head_id)
        if pending is not None and not pending.keep_vectors:
            # The vectors were written in this same batch: keep them with the new header.
            return dataclasses.replace(pending, payload=fields)
        return IndexPoint(head_id, fields, keep_vectors=True)

    def _delete(self, batch: _Batch, name: str, parent: Any) -> None:
        cube_id, memory_id = validation.memory_name(name)
        head_id = records.head_id(cube_id, memory_id)
        head = batch.heads.get(head_id)
        if head is None:
            return
        version = int(head["version"])
        if head["role"] != Role.TOMBSTONE:
            batch.deleted.append(memory_name(cube_id, memory_id))
            fields = records.tombstone(cube_id, memory_id, version)
            batch.upserts[head_id] = IndexPoint(head_id, fields)
            batch.heads[head_id] = fields
            batch.delete_filters.append(memory_filter(cube_id, Role.VERSION, memory_id=memory_id))
        payload = events_pb2.MemoryDeleted(name=name, cube_id=cube_id, version=version, purged=True)
        event_id = f"{cube_id}.{memory_id}.deleted"
        batch.events.append(_Event(cube_id, EventKind.MEMORY_DELETED, name, event_id, payload, parent))

    async def _publish(self, event: _Event) -> None:
        with tracer.start_as_current_span("vault.publish_event", context=event.context):
            await publish_event(
                self._js,
                cube_id=event.cube_id,
                kind=event.kind,
                subject=event.subject,
                event_id=event.event_id,
                payload=event.payload,
                source=SOURCE,
            )


def _request_of(head: dict[str, Any] | None, keys: SubjectKeys) -> str:
    return records.memory_of(head, keys).provenance.request_id if head else ""


def _event_of(memory: memory_pb2.Memory, parent: Any) -> _Event:
    """created for version 1; the target state's kind for a version that changed state; else updated.

    Decided from the command alone, so a redelivered command publishes the same event again.
    Events carry no content (text, context): the bus is not where access is checked, so a
    subscriber reads the text with GetMemory, and an erased subject leaves nothing in the stream.
    """
    memory = without_content(memory)
    change = memory.state_change
    if memory.version == 1:
        kind: EventKind = EventKind.MEMORY_CREATED
        payload: Any = events_pb2.MemoryCreated(memory=memory)
    elif memory.HasField("state_change") and change.to_state == memory.state:
        kind = EventKind(states.event_kind_value(memory.state))
        if memory.state == memory_pb2.MEMORY_STATE_DELETED:
            payload = events_pb2.MemoryDeleted(
                name=memory.name, cube_id=memory.cube_id, version=memory.version, purged=False
            )
        else:
            payload = events_pb2.MemoryStateChanged(memory=memory, previous_state=change.from_state)
    else:
        kind = EventKind.MEMORY_UPDATED
        payload = events_pb2.MemoryUpdated(memory=memory, previous_version=memory.version - 1)
    event_id = f"{memory.cube_id}.{memory.memory_id}.v{memory.version}.{kind.value}"
    return _Event(memory.cube_id, kind, memory.name, event_id, payload, parent)


def _check(command: commands_pb2.WriteCommand) -> None:
    if command.HasField("erase"):
        validation.cube_id(command.erase.cube_id)
        return
    if command.HasField("put"):
        memory = command.put.memory
        if memory.name != f"cubes/{memory.cube_id}/memories/{memory.memory_id}" or memory.version < 1:
            raise InvalidArgument("put carries an inconsistent memory header")
        validation.memory_name(memory.name)
        if command.put.keep_vectors:
            if command.put.embedding or command.put.context_embedding:
                raise InvalidArgument("a header-only put carries embeddings")
        elif not command.put.embedding:
            raise InvalidArgument("put carries no embedding")
        if command.put.context_embedding and not memory.index_context:
            raise InvalidArgument("put carries a context embedding but no context")
    elif command.HasField("delete"):
        validation.memory_name(command.delete.name)
    else:
        raise InvalidArgument("empty write command")


def _head_of(command: commands_pb2.WriteCommand) -> str | None:
    if command.HasField("erase"):
        return None
    if command.HasField("put"):
        return records.head_id(command.put.memory.cube_id, command.put.memory.memory_id)
    cube_id, memory_id = validation.memory_name(command.delete.name)
    return records.head_id(cube_id, memory_id)
