"""ReaderService: validate everything first, then embed, then append to the write log."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import re
import uuid
from contextlib import AsyncExitStack

import grpc
from google.protobuf import timestamp_pb2

from memos.reader.v1 import reader_pb2, reader_pb2_grpc
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2, vault_pb2_grpc
from memos_sdk.wire import Bucket
from services.common import validation
from services.common.access import cube_id_at, writes
from services.common.auth import caller_principal
from services.common.buckets import open_bucket
from services.common.bus import open_jetstream, wait_applied
from services.common.clients import EVERY_MEMORY, forward_errors, open_channel
from services.common.clock import now_timestamp
from services.common.embedder import Embedder, open_embedder
from services.common.errors import InvalidArgument, MemosError
from services.common.grpc_host import Component, Registration
from services.common.injection import LABEL as INJECTION_LABEL
from services.common.injection import instruction_rules
from services.common.kvmirror import KvMirror
from services.common.redaction import RedactionPolicies, Redactor
from services.common.sealing import SubjectKeys
from services.common.timeparse import parse_time
from services.common.writes import publish_write

from .extract import (
    Turn,
    context_after_earlier,
    context_embeddings,
    derived_embeddings,
    document_items,
    embedded,
    pieces_per_session,
    turn_items,
)
from .limits import CubeSizes
from .numbers import SessionNumbers
from .settings import ReaderSettings

log = logging.getLogger(__name__)

SOURCE_ID_PATTERN = re.compile(r"^[\w:.#/@+-]{1,128}$")
MAX_SPEAKER_CHARS = 128
# Writing to a cube nobody owns yet makes the caller its owner.
ACCESS = {
    "AddMessages": writes(cube_id_at(), claims=True),
    "AddDocument": writes(cube_id_at(), claims=True),
}


def _check_id(value: str, field: str) -> None:
    if value and not SOURCE_ID_PATTERN.match(value):
        raise InvalidArgument(
            f"{field} {value[:80]!r} is malformed: 1-128 letters, digits or _:.#/@+-",
            reason="MALFORMED_ID",
            field=field,
        )


def _check_text(value: str, field: str, max_bytes: int, *, required: bool) -> str:
    text = value.strip()
    if required and not text:
        raise InvalidArgument(f"{field} is empty", reason="EMPTY_TEXT", field=field)
    if len(text.encode()) > max_bytes:
        raise InvalidArgument(
            f"{field} is longer than {max_bytes} bytes", reason="TEXT_TOO_LONG", field=field, limit=max_bytes
        )
    return text


def _resolve_time(
    ts: timestamp_pb2.Timestamp, text: str, field: str, *, has_ts: bool, parsed: dict[str, dt.datetime]
) -> dt.datetime | None:
    """The message's time; ``parsed`` holds the texts parsed already (a session's turns share
    theirs, and parsing one takes longer than the rest of reading a short turn)."""
    if has_ts:
        return ts.ToDatetime(tzinfo=dt.UTC)
    if not text:
        return None
    if text not in parsed:
        try:
            parsed[text] = parse_time(text)
        except ValueError as err:
            raise InvalidArgument(f"{field}: {err}", reason="TIME_UNPARSEABLE", field=field) from err
    return parsed[text]


class ReaderServicer(reader_pb2_grpc.ReaderServiceServicer):
    def __init__(
        self,
        settings: ReaderSettings,
        js,
        embedder: Embedder,
        keys: SubjectKeys,
        policies: RedactionPolicies,
        vault: vault_pb2_grpc.VaultServiceStub,
        numbers: SessionNumbers,
    ) -> None:
        self._vault = vault
        self._numbers = numbers
        self._settings = settings
        self._js = js
        self._embedder = embedder
        self._keys = keys
        self._policies = policies
        self._sizes = CubeSizes(self._cube_size, settings.max_items_per_cube)

    def _turns(self, request: reader_pb2.AddMessagesRequest, request_id: str) -> list[Turn]:
        if not request.messages:
            raise InvalidArgument("messages is empty", reason="EMPTY_MESSAGES", field="messages")
        if len(request.messages) > self._settings.max_messages:
            raise InvalidArgument(
                f"{len(request.messages)} messages; at most {self._settings.max_messages} a request",
                reason="TOO_MANY_MESSAGES",
                limit=self._settings.max_messages,
            )
        turns, seen, parsed = [], set(), {}
        max_bytes = self._settings.max_text_bytes
        for i, m in enumerate(request.messages):
            field = f"messages[{i}]"
            _check_id(m.id, f"{field}.id")
            _check_id(m.session_id, f"{field}.session_id")
            if len(m.speaker) > MAX_SPEAKER_CHARS:
                raise InvalidArgument(f"{field}.speaker is too long", reason="SPEAKER_TOO_LONG", field=field)
            turn_id = m.id or f"{request_id}:{i}"
            if turn_id in seen:
                raise InvalidArgument(
                    f"{field}.id {turn_id!r} repeats", reason="DUPLICATE_TURN_ID", field=field
                )
            seen.add(turn_id)
            turns.append(
                Turn(
                    id=turn_id,
                    speaker=m.speaker.strip(),
                    text=_check_text(m.text, f"{field}.text", max_bytes, required=True),
                    session_id=m.session_id,
                    time=_resolve_time(
                        m.time, m.time_text, f"{field}.time_text", has_ts=m.HasField("time"), parsed=parsed
                    ),
                    image_caption=_check_text(
                        m.image_caption, f"{field}.image_caption", max_bytes, required=False
                    ),
                )
            )
        return turns

    async def _list(
        self, request: vault_pb2.ListMemoriesRequest, what: str
    ) -> vault_pb2.ListMemoriesResponse | None:
        """The vault's answer, or None when it cannot be reached: writes go to the log, not the
        vault, and a vault that is down must not stop them."""
        try:
            async with forward_errors("vault"):
                return await self._vault.ListMemories(request, timeout=self._settings.vault_timeout_seconds)
        except MemosError as err:
            if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            log.warning("%s unknown (%s); writing without it", what, err)
            return None

    async def _cube_size(self, cube_id: str) -> int | None:
        # The limit is soft: a size the vault could not tell is checked again on the next write.
        request = vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=1, filter=EVERY_MEMORY)
        reply = await self._list(request, f"the size of cube {cube_id}")
        return reply.total_size if reply else None

    async def _said_before(self, cube_id: str, numbered_from: dict[str, int]) -> dict[str, memory_pb2.Memory]:
        """The piece said last in each session that earlier requests numbered, where the vault has
        it: the context of the session's new turns begins with it."""

        async def last(session: str, number: int) -> tuple[str, memory_pb2.Memory | None]:
            at = vault_pb2.MemoryFilter(session_id=session, position=number)
            reply = await self._list(
                vault_pb2.ListMemoriesRequest(cube_id=cube_id, page_size=1, filter=at),
                f"the piece before the new turns of session {session}",
            )
            return session, reply.memories[0] if reply and reply.memories else None

        found = await asyncio.gather(*(last(s, n) for s, n in numbered_from.items() if s and n))
        return {session: memory for session, memory in found if memory is not None}

    async def _write(
        self,
        cube_id: str,
        items: list[memory_pb2.Memory],
        wait: bool,
        said_before: dict[str, memory_pb2.Memory] | None = None,
    ) -> tuple[list[str], int, bool]:
        """Embed and append one put per item; with ``wait``, until the vault applied them."""
        await self._sizes.make_room(cube_id, len(items))
        by_model = embedded(items)
        after_earlier = context_after_earlier(by_model, said_before) if said_before else []
        vectors = await self._embedder.embed(
            [item.text for item in by_model] + [item.index_context for item in after_earlier]
        )
        vectors, earlier_contexts = vectors[: len(by_model)], vectors[len(by_model) :]
        context_vectors = context_embeddings(by_model, vectors, self._settings.context_weight)
        context_vectors |= dict(zip((item.name for item in after_earlier), earlier_contexts, strict=True))
        dense = dict(zip((item.name for item in by_model), vectors, strict=True))
        dense |= derived_embeddings(items, dense)
        limit = asyncio.Semaphore(self._settings.publish_concurrency)

        async def put(item: memory_pb2.Memory, vector) -> int:
            put = commands_pb2.PutMemory(memory=item, embedding=vector.tolist())
            if item.name in context_vectors:
                put.context_embedding.extend(context_vectors[item.name].tolist())
            command = commands_pb2.WriteCommand(put=put)
            async with limit:
                seq, _ = await publish_write(
                    self._js, cube_id, command, msg_id=f"{item.name}/v1", keys=self._keys
                )
            return seq

        sequences = await asyncio.gather(*(put(item, dense[item.name]) for item in items))
        last = max(sequences)
        if wait:
            await wait_applied(self._js, last, timeout_seconds=self._settings.wait_applied_timeout_seconds)
        return [item.name for item in items], last, wait

    async def AddMessages(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        request_id = validation.request_id(request.request_id) or uuid.uuid4().hex
        turns = _redacted(self._turns(request, request_id), self._policies.for_cube(cube_id))
        numbered_from = await self._numbers.take(
            cube_id, request_id, pieces_per_session(turns, self._settings.piece_tokens)
        )
        said_before = await self._said_before(cube_id, numbered_from) if self._settings.context_tokens else {}
        items = turn_items(
            cube_id,
            turns,
            piece_tokens=self._settings.piece_tokens,
            context_tokens=self._settings.context_tokens,
            statement_piece_tokens=self._settings.statement_piece_tokens,
            digest_tokens=self._settings.digest_tokens,
            request_id=request_id,
            principal=caller_principal(),
            now=now_timestamp(),
            numbered_from=numbered_from,
            said_before=said_before,
        )
        _flag_instructions(items, {t.id: t.text for t in turns})
        names, seq, applied = await self._write(cube_id, items, request.wait_applied, said_before)
        log.info("added %d turn items to %s", len(names), cube_id, extra={"cube": cube_id, "log_seq": seq})
        return reader_pb2.AddMessagesResponse(memory_names=names, log_sequence=seq, applied=applied)

    async def AddDocument(self, request, context):
        cube_id = validation.cube_id(request.cube_id)
        request_id = validation.request_id(request.request_id) or uuid.uuid4().hex
        _check_id(request.document_id, "document_id")
        text = _check_text(request.text, "text", self._settings.max_document_bytes, required=True)
        title = _check_text(request.title, "title", 1024, required=False)
        for i, tag in enumerate(request.tags):
            _check_id(tag, f"tags[{i}]")
        document_id = request.document_id or hashlib.sha256(text.encode()).hexdigest()[:24]
        redactor = self._policies.for_cube(cube_id)
        text, title = redactor.redact(text), redactor.redact(title)
        time = request.time.ToDatetime(tzinfo=dt.UTC) if request.HasField("time") else None
        items = document_items(
            cube_id,
            document_id=document_id,
            title=title,
            text=text,
            time=time,
            tags=list(request.tags),
            target_tokens=self._settings.document_chunk_tokens,
            request_id=request_id,
            principal=caller_principal(),
            now=now_timestamp(),
        )
        _flag_instructions(items, {})
        names, seq, applied = await self._write(cube_id, items, request.wait_applied)
        log.info("added document %s to %s as %d items", document_id, cube_id, len(names))
        return reader_pb2.AddDocumentResponse(memory_names=names, log_sequence=seq, applied=applied)


def _redacted(turns: list[Turn], redactor: Redactor) -> list[Turn]:
    """The turns with what the cube's policy masks masked, before anything else sees them."""
    if not redactor.active:
        return turns
    return [
        dataclasses.replace(
            t,
            text=redactor.redact(t.text),
            speaker=redactor.redact(t.speaker),
            image_caption=redactor.redact(t.image_caption),
        )
        for t in turns
    ]


def _flag_instructions(items: list[memory_pb2.Memory], turn_texts: dict[str, str]) -> None:
    """Label items whose source turn (or, for documents, whose own text) reads like an
    instruction to a model (injection.py)."""
    of_turn = {turn_id: instruction_rules(text) for turn_id, text in turn_texts.items()}  # once per turn
    for item in items:
        found = [of_turn[s.turn_id] for s in item.provenance.sources if s.turn_id in of_turn]
        rules = sorted({r for rules in (found or [instruction_rules(item.text)]) for r in rules})
        if rules:
            item.labels[INJECTION_LABEL] = ",".join(rules)


async def setup(stack: AsyncExitStack, settings: ReaderSettings) -> Component:
    js = await open_jetstream(stack, settings.nats_url, "reader")
    keys = await SubjectKeys.start(stack, js)
    policies = KvMirror(await open_bucket(js, Bucket.POLICIES))
    await policies.start(stack)
    vault = await stack.enter_async_context(open_channel(settings.vault_addr, settings))
    servicer = ReaderServicer(
        settings,
        js,
        open_embedder(stack, settings),
        keys,
        RedactionPolicies(policies),
        vault_pb2_grpc.VaultServiceStub(vault),
        SessionNumbers(
            await open_bucket(js, Bucket.SESSION_NUMBERS), await open_bucket(js, Bucket.NUMBER_GRANTS)
        ),
    )
    add = reader_pb2_grpc.add_ReaderServiceServicer_to_server
    return Component(
        registrations=[Registration.of(reader_pb2.DESCRIPTOR, "ReaderService", add, servicer, ACCESS)],
    )
