"""Bad input gets INVALID_ARGUMENT / NOT_FOUND with an ErrorInfo reason, and writes nothing."""

from __future__ import annotations

import grpc
import nats as nats_client
import pytest

from memos.reader.v1 import reader_pb2
from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2
from memos_sdk import MemosAPIError
from memos_sdk.wire import Stream

pytestmark = pytest.mark.integration

OK = {"id": "t1", "speaker": "a", "text": "hello there"}
MISSING = "cubes/demo/memories/" + "0" * 32


async def _log_length(nats_url: str) -> int:
    nc = await nats_client.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(Stream.WRITES)).state.messages
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("cube_id", "messages", "reason"),
    [
        ("demo", [], "EMPTY_MESSAGES"),
        ("demo", [{"speaker": "a", "text": "   "}], "EMPTY_TEXT"),
        ("demo", [{"speaker": "a", "text": "x" * (64 * 1024 + 1)}], "TEXT_TOO_LONG"),
        ("", [OK], "MISSING_FIELD"),
        ("no.dots", [OK], "MALFORMED_CUBE_ID"),
        ("demo", [{**OK, "id": "bad id with spaces"}], "MALFORMED_ID"),
        ("demo", [OK, {**OK, "text": "again"}], "DUPLICATE_TURN_ID"),
        ("demo", [{**OK, "time_text": "sometime soon"}], "TIME_UNPARSEABLE"),
        # one bad message spoils the request: the good one before it is not written either
        (
            "demo",
            [{"id": "good", "speaker": "a", "text": "fine"}, {"id": "bad", "speaker": "a", "text": ""}],
            "EMPTY_TEXT",
        ),
    ],
)
async def test_add_messages_rejects_and_writes_nothing(mesh, cube_id, messages, reason):
    before = await _log_length(mesh.nats.url)
    with pytest.raises(MemosAPIError) as err:
        await mesh.client.add_messages(cube_id, messages)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == reason
    assert await _log_length(mesh.nats.url) == before


async def test_too_many_messages(mesh):
    with pytest.raises(MemosAPIError) as err:
        await mesh.client.add_messages(
            "demo", [{"id": f"t{i}", "speaker": "a", "text": "x"} for i in range(1001)]
        )
    assert err.value.reason == "TOO_MANY_MESSAGES"


@pytest.mark.parametrize(
    ("call", "code", "reason"),
    [
        (lambda c: c.get("not-a-name"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_NAME"),
        (lambda c: c.get(MISSING), grpc.StatusCode.NOT_FOUND, "MEMORY_NOT_FOUND"),
        (lambda c: c.delete(MISSING), grpc.StatusCode.NOT_FOUND, "MEMORY_NOT_FOUND"),
        (lambda c: c.update(MISSING, text="x"), grpc.StatusCode.NOT_FOUND, "MEMORY_NOT_FOUND"),
        (lambda c: c.versions("cubes/x/memories/zz"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_NAME"),
        (lambda c: c.list_page("bad cube"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_CUBE_ID"),
        (
            lambda c: c.list_page("demo", derived_from=MISSING.replace("demo", "other", 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NAME_OUTSIDE_CUBE",
        ),
        (
            lambda c: c.list_page("demo", derived_from="not-a-name"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MALFORMED_NAME",
        ),
        (
            lambda c: c.list_page("demo", page_token="garbage"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        ),
        (lambda c: c.search("demo", "   "), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_QUERY"),
        (lambda c: c.search("demo", "q", top_k=51), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TOP_K"),
        (
            lambda c: c.search("demo", "q", token_budget=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BUDGET",
        ),
        (lambda c: c.search("a.b", "q"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_CUBE_ID"),
    ],
)
async def test_reads_and_changes_reject_bad_input(mesh, call, code, reason):
    with pytest.raises(MemosAPIError) as err:
        await call(mesh.client)
    assert (err.value.code, err.value.reason) == (code, reason)


async def test_page_token_of_another_query_is_refused(mesh, cube):
    await mesh.client.add_messages(
        cube,
        [{"id": f"t{i}", "speaker": s, "text": f"turn {i}"} for i, s in enumerate("abab")],
        wait_applied=True,
    )
    page = await mesh.client.list_page(cube, page_size=1)
    assert page.next_page_token
    for other in (
        lambda: mesh.client.list_page(cube, page_size=1, page_token=page.next_page_token, speaker="a"),
        lambda: mesh.client.list_page(cube + "x", page_size=1, page_token=page.next_page_token),
    ):
        with pytest.raises(MemosAPIError) as err:
            await other()
        assert err.value.reason == "PAGE_TOKEN_MISMATCH"


async def test_update_with_an_unknown_field_and_an_empty_mask(mesh, cube):
    added = await mesh.client.add_messages(cube, [OK], wait_applied=True)
    name = added.memory_names[0]
    for paths, reason in ((["version"], "FIELD_NOT_UPDATABLE"), ([], "EMPTY_UPDATE_MASK")):
        request = vault_pb2.UpdateMemoryRequest(
            memory={"name": name, "text": "x"}, update_mask={"paths": paths}
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mesh.client.vault.UpdateMemory(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in str(
            err.value.trailing_metadata()
        )
    assert (await mesh.client.get(name)).version == 1


async def test_query_with_a_wrong_embedding_size(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.client.vault.Query(vault_pb2.QueryRequest(cube_id="demo", embedding=[0.1, 0.2]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "boost",
    [
        {"boost": {"speaker": "a"}, "boost_weight": 1.5},
        {"boost": {"speaker": "a"}, "boost_weight": float("nan")},
        {"boost": {"states": [memory_pb2.MEMORY_STATE_ARCHIVED]}, "boost_weight": 0.1},
    ],
)
async def test_query_with_a_bad_boost(mesh, boost):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.client.vault.Query(vault_pb2.QueryRequest(cube_id="demo", text="q", **boost))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INVALID_BOOST" in str(err.value.trailing_metadata())


@pytest.mark.parametrize("at", [{"position": 3}, {"position": -1, "session_id": "S1"}])
async def test_a_position_filter_needs_a_session_and_a_positive_number(mesh, at):
    request = vault_pb2.ListMemoriesRequest(cube_id="demo", filter=vault_pb2.MemoryFilter(**at))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.client.vault.ListMemories(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INVALID_POSITION" in str(err.value.trailing_metadata())


@pytest.mark.parametrize("field", ["replies", "questions"])
async def test_query_asking_too_many_replies_or_questions(mesh, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.client.vault.Query(vault_pb2.QueryRequest(cube_id="demo", text="q", **{field: 201}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"INVALID_{field.upper()}" in str(err.value.trailing_metadata())


async def test_bad_preload_and_document_requests(mesh):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.client.scheduler.Preload(scheduler_pb2.PreloadRequest(cube_id="no such/cube"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError):
        await mesh.client.reader.AddDocument(reader_pb2.AddDocumentRequest(cube_id="demo", text=""))
