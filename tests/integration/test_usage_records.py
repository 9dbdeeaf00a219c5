"""Usage on its way from searches to the vault: gathered into one record whatever the cubes, named
once per use, and folded into the usage table beside the index, not into the sealed record."""

from __future__ import annotations

import asyncio
import base64
from contextlib import AsyncExitStack

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import DeliverPolicy

from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2
from memos_sdk.wire import MANY_CUBES, SUBJECT_PREFIX, Stream, usage_subject
from services.common.bus import open_jetstream, publish
from services.common.sealing import SubjectKeys, subject_key_id, unseal
from services.scheduler.usage import AccessRecorder
from services.vault import records
from services.vault.index import EdgeIndex, IndexPoint
from services.vault.records import Role
from services.vault.usage import USAGE_FILE, UsageFolder, UsageTable, forget_dead


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


async def test_uses_gather_into_one_record_naming_each_use(nats):
    async with AsyncExitStack() as stack:
        js = await open_jetstream(stack, nats.url, "test")
        recorder = AccessRecorder(js, enabled=True, linger_seconds=0.3)
        recorder.record("cube-a", ["cubes/cube-a/memories/1", "cubes/cube-a/memories/2"])
        recorder.record("cube-b", ["cubes/cube-b/memories/9"])
        recorder.record("cube-a", ["cubes/cube-a/memories/1", "cubes/cube-a/memories/1"])
        await asyncio.sleep(0.6)
        recorder.record("cube-a", ["cubes/cube-a/memories/3"])  # after the window: a record of its own
        await recorder.close()
        found = await _published(js, 2)
        info = await js.stream_info(Stream.USAGE)
        subjects = [(await js.get_msg(Stream.USAGE, seq)).subject for seq in (1, 2)]
    assert [(r.cube_id, list(r.names)) for r in found] == [
        # repeats within one search count once; each search is one use. Several cubes: no cube_id
        (
            "",
            [
                "cubes/cube-a/memories/1",
                "cubes/cube-a/memories/2",
                "cubes/cube-b/memories/9",
                "cubes/cube-a/memories/1",
            ],
        ),
        ("cube-a", ["cubes/cube-a/memories/3"]),
    ]
    assert (
        subjects
        == [usage_subject(""), usage_subject("cube-a")]
        == [
            f"{SUBJECT_PREFIX}.usage.{MANY_CUBES}",
            f"{SUBJECT_PREFIX}.usage.cube-a",
        ]
    )
    assert info.state.messages == 2


async def test_closing_publishes_what_gathered_without_waiting_out_the_linger(nats):
    async with AsyncExitStack() as stack:
        js = await open_jetstream(stack, nats.url, "test")
        recorder = AccessRecorder(js, enabled=True, linger_seconds=600)
        recorder.record("cube-a", ["cubes/cube-a/memories/1"])
        await asyncio.wait_for(recorder.close(), 10)
        found = await _published(js, 1)
    assert [(r.cube_id, list(r.names)) for r in found] == [("cube-a", ["cubes/cube-a/memories/1"])]


async def test_the_sealed_record_carries_no_usage(nats):
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
        fields = records.payload(memory, Role.HEAD, keys)
        sealed = memory_pb2.Memory.FromString(
            unseal(key_id, keys.cached(key_id), base64.b64decode(fields["record"]))
        )
        assert not sealed.HasField("usage")  # usage lives in the usage table
        assert not {"access_count", "last_access_ns", "usage_seq"} & fields.keys()
        opened = records.memory_of(fields, keys)
        assert opened.text == memory.text and not opened.HasField("usage")


def _head(cube_id: str, memory_id: str) -> IndexPoint:
    fields = {"cube": cube_id, "memory_id": memory_id, "role": Role.HEAD.value}
    return IndexPoint(records.head_id(cube_id, memory_id), fields, dense=[1.0, 0.0, 0.0, 0.0], text="x")


async def _fetch_all(js, count: int):
    """The usage stream's messages, from a consumer of their own (a redelivery, for the folder)."""
    sub = await js.pull_subscribe(f"{SUBJECT_PREFIX}.usage.>", stream=Stream.USAGE)
    return await sub.fetch(count, timeout=5)


async def test_uses_fold_into_the_table_once_each_for_live_memories_only(nats, tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=4, bm25_avg_len=8.0)
    await index.open()
    live_id, gone_id = "a" * 32, "b" * 32
    live, gone = f"cubes/c/memories/{live_id}", f"cubes/c/memories/{gone_id}"
    elsewhere = f"cubes/d/memories/{live_id}"  # another cube's memory
    await index.write(
        [
            _head("c", live_id),
            _head("d", live_id),
            IndexPoint(records.head_id("c", gone_id), records.tombstone("c", gone_id, 2)),
        ],
        [],
    )
    table = UsageTable.open(tmp_path / USAGE_FILE)
    try:
        async with AsyncExitStack() as stack:
            js = await open_jetstream(stack, nats.url, "test")
            folder = UsageFolder(js, index, table, batch_size=16, ack_wait_seconds=5)
            first, last = Timestamp(seconds=1_700_000_000), Timestamp(seconds=1_700_000_100)
            for msg_id, cube_id, names, at in (
                ("u1", "c", [live, live, gone], first),
                ("u2", "", [live, elsewhere], last),  # a record of several cubes
            ):
                record = commands_pb2.AccessRecord(cube_id=cube_id, names=names, time=at)
                await publish(js, usage_subject(cube_id), record.SerializeToString(), msg_id=msg_id)
            await folder.fold(await _fetch_all(js, 2))
            assert table.get(live) == (3, last.ToNanoseconds(), 2)  # a name listed twice: two uses
            assert table.get(elsewhere) == (1, last.ToNanoseconds(), 2)
            assert table.get(gone) is None  # deleted since the search: no row
            await folder.fold(await _fetch_all(js, 2))  # delivered again
            assert table.get(live).count == 3

            memory = memory_pb2.Memory(name=live)
            table.fill(memory)
            assert memory.usage.access_count == 3
            assert memory.usage.last_access_time == last

            table.close()
            table = UsageTable.open(tmp_path / USAGE_FILE)  # what was folded is on disk
            assert table.get(live) == (3, last.ToNanoseconds(), 2)

            await index.write(
                [IndexPoint(records.head_id("c", live_id), records.tombstone("c", live_id, 2))], []
            )
            await forget_dead(index, table, "c")
            assert len(table) == 1 and table.get(elsewhere)  # only cube c's dead rows go
    finally:
        table.close()
        await index.close()


async def test_a_record_with_a_malformed_name_is_dropped_and_the_others_fold(nats, tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=4, bm25_avg_len=8.0)
    await index.open()
    memory_id = "a" * 32
    name = f"cubes/c/memories/{memory_id}"
    await index.write([_head("c", memory_id)], [])
    table = UsageTable.open(tmp_path / USAGE_FILE)
    try:
        async with AsyncExitStack() as stack:
            js = await open_jetstream(stack, nats.url, "test")
            folder = UsageFolder(js, index, table, batch_size=16, ack_wait_seconds=5)
            at = Timestamp(seconds=1_700_000_000)
            for msg_id, names in (("u1", [name]), ("u2", [name, "cubes/c/memories/../x"]), ("u3", [name])):
                record = commands_pb2.AccessRecord(cube_id="c", names=names, time=at)
                await publish(js, usage_subject("c"), record.SerializeToString(), msg_id=msg_id)
            await folder.fold(await _fetch_all(js, 3))
            assert table.get(name).count == 2  # u1 and u3; none of u2, whose other name has a row
            assert len(table) == 1
    finally:
        table.close()
        await index.close()


class _FailingOnce(UsageTable):
    """A table whose second transaction fails, once: a fold stopped partway (a crash)."""

    puts = 0

    def put(self, rows):
        self.puts += 1
        if self.puts == 2:
            raise OSError("disk gone")
        super().put(rows)


async def test_a_fold_stopped_between_transactions_counts_each_use_once_when_redone(nats, tmp_path):
    index = EdgeIndex(tmp_path / "index", dim=4, bm25_avg_len=8.0)
    await index.open()
    ids = [c * 32 for c in "abc"]
    names = [f"cubes/c/memories/{memory_id}" for memory_id in ids]
    await index.write([_head("c", memory_id) for memory_id in ids], [])
    table = _FailingOnce.open(tmp_path / USAGE_FILE)
    try:
        async with AsyncExitStack() as stack:
            js = await open_jetstream(stack, nats.url, "test")
            folder = UsageFolder(js, index, table, batch_size=16, ack_wait_seconds=5, rows_per_transaction=1)
            at = Timestamp(seconds=1_700_000_000)
            for msg_id in ("u1", "u2"):
                record = commands_pb2.AccessRecord(cube_id="c", names=names, time=at)
                await publish(js, usage_subject("c"), record.SerializeToString(), msg_id=msg_id)
            with pytest.raises(OSError):
                await folder.fold(await _fetch_all(js, 2))
            assert [table.get(name) and table.get(name).count for name in names] == [2, None, None]
            await folder.fold(await _fetch_all(js, 2))  # delivered again
            assert [table.get(name).count for name in names] == [2, 2, 2]
    finally:
        table.close()
        await index.close()
