"""A chat turn through the whole mesh: retrieval, activation memory (KV), placement, the report."""

import asyncio

import grpc
import nats as nats_module
import pytest

from memos.scheduler.v1 import scheduler_pb2 as pb
from memos_sdk import MemosAPIError
from memos_sdk.events import decode_event
from memos_sdk.wire import EventKind, events_subject
from tests.conftest import in_process_mesh

FACTS = [
    {"speaker": "alice", "text": "I adopted a cat called Miso last week.", "time_text": "2023-05-08 10:00"},
    {"speaker": "alice", "text": "My sister Ana works as a nurse in Porto.", "time_text": "2023-05-09 10:00"},
    {"speaker": "alice", "text": "I am allergic to peanuts.", "time_text": "2023-05-10 10:00"},
]
QUESTION = [("user", "What is the name of my cat?")]


async def turn(client, cube, messages=QUESTION, **options):
    deltas, reports = [], []
    async for response in client.chat(cube, messages, max_new_tokens=16, **options):
        if response.text_delta:
            deltas.append(response.text_delta)
        if response.HasField("report"):
            reports.append(response.report)
    assert len(reports) == 1
    return "".join(deltas), reports[0]


def placements(report) -> dict[str, int]:
    return {use.name: use.placement for use in report.memories}


async def test_chat_uses_the_preloaded_kv_cache_and_reports_it(mesh, cube):
    added = await mesh.client.add_messages(cube, FACTS, wait_applied=True)
    names = set(added.memory_names)

    text, report = await turn(mesh.client, cube)
    assert text and report.activation == pb.ACTIVATION_OUTCOME_NONE
    assert set(placements(report).values()) == {pb.PLACEMENT_TEXT}
    assert set(placements(report)) <= names and report.cached_tokens == 0

    preloaded = await mesh.client.preload(cube)
    assert {m.name for m in preloaded.activation.memories} == names
    assert preloaded.created and preloaded.activation.kv_ref.startswith("kv/")

    kv_text, report = await turn(mesh.client, cube)
    assert report.activation == pb.ACTIVATION_OUTCOME_USED and report.kv_ref == preloaded.activation.kv_ref
    assert report.kv_status in ("hot", "loaded")
    assert report.cached_tokens == preloaded.activation.prefix_tokens
    assert placements(report) == dict.fromkeys(names, pb.PLACEMENT_KV_PREFIX)
    assert report.completion_tokens > 0 and report.finish_reason in ("stop", "length")
    assert kv_text  # the same memories as text before, in the prefix now: a real answer either way


async def test_a_stale_cache_is_never_used_silently(mesh, cube):
    added = await mesh.client.add_messages(cube, FACTS, wait_applied=True)
    first = (await mesh.client.preload(cube)).activation
    cat = added.memory_names[0]
    updated = await mesh.client.update(cat, text="[8 May 2023] alice: I adopted a cat called Pixel.")

    _, report = await turn(mesh.client, cube)
    assert report.activation == pb.ACTIVATION_OUTCOME_STALE_FALLBACK and report.cached_tokens == 0
    assert {u.name: u.version for u in report.memories}[cat] == updated.version
    assert set(placements(report).values()) == {pb.PLACEMENT_TEXT}

    _, report = await turn(mesh.client, cube, activation_mode=pb.ACTIVATION_MODE_REBUILD_STALE)
    assert report.activation == pb.ACTIVATION_OUTCOME_REBUILT and report.kv_ref != first.kv_ref
    assert placements(report)[cat] == pb.PLACEMENT_KV_PREFIX and report.cached_tokens > 0

    await mesh.client.delete(added.memory_names[1])
    _, report = await turn(mesh.client, cube)
    assert report.activation == pb.ACTIVATION_OUTCOME_STALE_FALLBACK
    assert added.memory_names[1] not in placements(report)

    _, report = await turn(mesh.client, cube, activation_mode=pb.ACTIVATION_MODE_OFF)
    assert report.activation == pb.ACTIVATION_OUTCOME_OFF and not report.kv_ref


async def test_writes_rebuild_the_activation_automatically_and_publish_kv_built(
    nats, triton_addr, tmp_path, cube
):
    nc = await nats_module.connect(nats.url)
    sub = await nc.subscribe(events_subject(cube, EventKind.KV_BUILT))
    try:
        async with in_process_mesh(
            nats, triton_addr, tmp_path, auto_preload=True, preload_debounce_seconds=0.5
        ) as running:
            added = await running.client.add_messages(cube, FACTS, wait_applied=True)
            msg = await asyncio.wait_for(sub.next_msg(timeout=120), timeout=121)
            event = decode_event(msg.headers, msg.data)
            assert event.type == EventKind.KV_BUILT.ce_type and event.payload.created
            built = {m.name for m in event.payload.activation.memories}
            if built != set(added.memory_names):  # a build may start before the last write landed
                msg = await sub.next_msg(timeout=120)
                built = {m.name for m in decode_event(msg.headers, msg.data).payload.activation.memories}
            assert built == set(added.memory_names)
            _, report = await turn(running.client, cube)
            assert report.activation == pb.ACTIVATION_OUTCOME_USED
    finally:
        await nc.drain()


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "EMPTY_MESSAGES"),
        ([("robot", "hi")], "INVALID_ROLE"),
        ([("user", "  ")], "INVALID_CONTENT"),
        ([("user", "hi"), ("assistant", "hello")], "LAST_NOT_USER"),
    ],
)
async def test_bad_chat_requests_get_invalid_argument(mesh, cube, messages, reason):
    with pytest.raises(MemosAPIError) as err:
        await turn(mesh.client, cube, messages)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.reason == reason


async def test_preload_of_an_empty_cube_fails_with_a_reason(mesh, cube):
    with pytest.raises(MemosAPIError) as err:
        await mesh.client.preload(cube)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and err.value.reason == "NO_MEMORIES"
