"""Usage on its way from searches to the index: gathered into one record per cube, named once per
use, and kept beside the sealed record, not inside it."""

from __future__ import annotations

import asyncio
import base64
from contextlib import AsyncExitStack

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import DeliverPolicy

from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2
from memos_sdk.wire import SUBJECT_PREFIX, Stream
from services.common.bus import open_jetstream
from services.common.sealing import SubjectKeys, subject_key_id, unseal
from services.scheduler.usage import AccessRecorder
from services.vault import records
from services.vault.records import Role


async def _published(js, count: int) -> list[commands_pb2.AccessRecord]:
    sub = await js.subscribe(
        f"{SUBJECT_PREFIX}.usage.>",
        stream=Stream.USAGE,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    found = []
    try:
        while len(found) < count:
            msg = await sub.next_msg(timeout=5)
            found.append(commands_pb2.AccessRecord.FromString(msg.data))
    finally:
        await sub.unsubscribe()
    return found


async def test_uses_gather_into_one_record_per_cube_naming_each_use(nats):
    async with AsyncExitStack() as stack:
        js = await open_jetstream(stack, nats.url, "test")
        recorder = AccessRecorder(js, enabled=True, linger_seconds=0.3)
        recorder.record("cube-a", ["cubes/cube-a/memories/1", "cubes/cube-a/memories/2"])
        recorder.record("cube-b", ["cubes/cube-b/memories/9"])
        recorder.record("cube-a", ["cubes/cube-a/memories/1", "cubes/cube-a/memories/1"])
        await asyncio.sleep(0.6)
        recorder.record("cube-a", ["cubes/cube-a/memories/3"])  # after the window: a record of its own
        await recorder.close()
        found = await _published(js, 3)
        info = await js.stream_info(Stream.USAGE)
    by_cube = [(r.cube_id, list(r.names)) for r in found]
    assert by_cube == [
        # repeats within one search count once; each search is one use
        ("cube-a", ["cubes/cube-a/memories/1", "cubes/cube-a/memories/2", "cubes/cube-a/memories/1"]),
        ("cube-b", ["cubes/cube-b/memories/9"]),
        ("cube-a", ["cubes/cube-a/memories/3"]),
    ]
    assert info.state.messages == 3


async def test_closing_publishes_what_gathered_without_waiting_out_the_linger(nats):
    async with AsyncExitStack() as stack:
        js = await open_jetstream(stack, nats.url, "test")
        recorder = AccessRecorder(js, enabled=True, linger_seconds=600)
        recorder.record("cube-a", ["cubes/cube-a/memories/1"])
        await asyncio.wait_for(recorder.close(), 10)
        found = await _published(js, 1)
    assert [(r.cube_id, list(r.names)) for r in found] == [("cube-a", ["cubes/cube-a/memories/1"])]


async def test_usage_is_kept_beside_the_sealed_record(nats):
    memory = memory_pb2.Memory(
        name="cubes/c/memories/m", cube_id="c", memory_id="m", text="I live in Lyon.", version=2
    )
    memory.provenance.principal = "principals/alice"
    memory.usage.access_count = 7
    memory.usage.last_access_time.CopyFrom(Timestamp(seconds=1_700_000_000, nanos=5))
    key_id = subject_key_id("c", "principals/alice")
    async with AsyncExitStack() as stack:
        js = await open_jetstream(stack, nats.url, "test")
        keys = await SubjectKeys.start(stack, js)
        await keys.key(key_id, create=True)
        fields = records.payload(memory, Role.HEAD, keys, usage_seq=42)
        sealed = memory_pb2.Memory.FromString(
            unseal(key_id, keys.cached(key_id), base64.b64decode(fields["record"]))
        )
        assert not sealed.HasField("usage")  # a fold rewrites the counts, never the record
        assert (fields["access_count"], fields["usage_seq"]) == (7, 42)
        assert records.memory_of(fields, keys) == memory
        folded = fields | records.usage_fields(9, 1_800_000_000 * 10**9, 43)
        opened = records.memory_of(folded, keys)
        assert opened.usage.access_count == 9
        assert opened.usage.last_access_time.seconds == 1_800_000_000
        assert opened.text == memory.text and records.usage_seq(folded) == 43
