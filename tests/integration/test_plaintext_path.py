"""Plaintext memory end to end through reader, write log, vault and scheduler."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import nats as nats_client
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from memos.events.v1 import events_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import commands_pb2, vault_pb2
from memos_sdk import MemosAPIError
from memos_sdk.bundles import ingest_bundle
from memos_sdk.events import decode_event
from memos_sdk.tokens import count_tokens
from memos_sdk.wire import EventKind, Header, events_subject, writes_subject
from services.common.bus import publish, wait_applied
from services.reader.extract import statements
from tests.conftest import in_process_mesh

pytestmark = pytest.mark.integration
T = TypeVar("T")

CONVERSATION = [
    {
        "id": "D1:1",
        "speaker": "Caroline",
        "text": "I went to the LGBTQ support group yesterday.",
        "time_text": "1:56 pm on 8 May, 2023",
        "session_id": "S1",
    },
    {
        "id": "D1:2",
        "speaker": "Melanie",
        "text": "That is great! I painted a sunrise over the lake last week.",
        "time_text": "1:56 pm on 8 May, 2023",
        "session_id": "S1",
    },
    {
        "id": "D1:3",
        "speaker": "Caroline",
        "text": "I am researching adoption agencies for my future family.",
        "time_text": "1:56 pm on 8 May, 2023",
        "session_id": "S1",
    },
    {
        "id": "D2:1",
        "speaker": "Melanie",
        "text": "We went camping with the kids in the mountains.",
        "time_text": "2:10 pm on 25 May, 2023",
        "session_id": "S2",
    },
]


async def test_add_then_search_finds_the_turn_with_its_provenance(mesh, cube):
    added = await mesh.client.add_messages(cube, CONVERSATION, wait_applied=True)
    assert added.applied and len(added.memory_names) == 4 and added.log_sequence > 0

    found = await mesh.client.search(cube, "Which support group did Caroline go to?", top_k=3)
    top = found.results[0].memory
    assert [s.turn_id for s in top.provenance.sources] == ["D1:1"]
    assert top.text == "[8 May 2023] Caroline: I went to the LGBTQ support group yesterday (7 May 2023)."
    assert found.results[0].score > 0
    assert top.name in {m.name for m in found.results[0].span}
    assert found.results[0].text.startswith("[8 May 2023] ")

    camping = await mesh.client.search(cube, "camping trip in the mountains", top_k=1)
    assert camping.results[0].memory.provenance.sources[0].turn_id == "D2:1"


async def test_token_budget_limits_the_results(mesh, cube):
    await mesh.client.add_messages(cube, CONVERSATION, wait_applied=True)
    unlimited = await mesh.client.search(cube, "Caroline Melanie", top_k=10)
    assert sum(len(r.span) for r in unlimited.results) == 4
    assert unlimited.total_tokens == sum(r.tokens for r in unlimited.results)
    budget = unlimited.results[0].tokens + 1
    limited = await mesh.client.search(cube, "Caroline Melanie", top_k=10, token_budget=budget)
    assert 1 <= sum(len(r.span) for r in limited.results) < 4
    assert limited.total_tokens <= budget


async def test_a_short_answer_is_found_by_what_it_answers_and_joins_the_question(mesh, cube):
    said_on = "1:56 pm on 8 May, 2023"  # a Monday
    turns = [
        {"id": "P1", "speaker": "Melanie", "text": "Did you finish the pottery class you signed up for?"},
        {"id": "P2", "speaker": "Caroline", "text": "Yes! Got my certificate last Friday."},
        {"id": "P3", "speaker": "Melanie", "text": "The weather is lovely, we should walk the dog."},
    ]
    await mesh.client.add_messages(
        cube, [t | {"time_text": said_on, "session_id": "S9"} for t in turns], wait_applied=True
    )
    found = await mesh.client.search(cube, "When did Caroline finish her pottery class?", top_k=2)
    carrying = {m.provenance.sources[0].turn_id: r for r in found.results for m in r.span}
    assert {"P1", "P2"} <= carrying.keys()  # the answer is found, though it never names the class
    assert "last Friday (5 May 2023)" in carrying["P2"].text
    for result in found.results:
        assert result.text.count("[8 May 2023]") == 1  # one date line, also for a span
        assert result.tokens == count_tokens(result.text)
        assert all(m.tokens == count_tokens(m.text) > 0 for m in result.span)  # counted at write


async def test_a_time_the_question_names_is_read_at_its_reference_time(mesh, cube):
    trips = [
        ("C1", "We went camping by the lake with the kids.", "10:00 am on 8 May, 2023"),
        ("C2", "We went camping in the forest with the kids.", "10:00 am on 20 August, 2023"),
    ]
    await mesh.client.add_messages(
        cube,
        [
            {"id": tid, "speaker": "Melanie", "text": text, "time_text": when, "session_id": tid}
            for tid, text, when in trips
        ],
        wait_applied=True,
    )

    async def first(question: str, asked: dt.datetime | None = None) -> str:
        found = await mesh.client.search(cube, question, top_k=2, reference_time=asked)
        return found.results[0].memory.provenance.sources[0].turn_id

    question = "Where did Melanie go camping last month?"
    assert await first(question, dt.datetime(2023, 6, 10, tzinfo=dt.UTC)) == "C1"
    assert await first(question, dt.datetime(2023, 9, 15, tzinfo=dt.UTC)) == "C2"
    assert await first("Where did Melanie go camping in May 2023?") == "C1"
    assert await first("Where did Melanie go camping in August 2023?") == "C2"


async def test_a_statement_inside_a_long_turn_is_found_and_stands_for_the_turn(mesh, cube):
    aside = "By the way, I did my study abroad program at the University of Melbourne."
    request = (
        "Can you recommend a light and durable travel backpack for a two week trip through the "
        "mountains and a few cities? I care most about comfort on long walks and a good rain cover."
    )
    packing = "Packing cubes, spare zippers and a small first aid kit are on my list as well. " * 3
    await mesh.client.add_messages(
        cube,
        [
            {"id": "T1", "speaker": "user", "text": f"{request} {aside} {packing}", "session_id": "S1"},
            {"id": "T2", "speaker": "assistant", "text": "Look at the Osprey Farpoint.", "session_id": "S1"},
        ],
        wait_applied=True,
    )
    question = "Where did I do my study abroad program?"
    found = (await mesh.client.search(cube, question, top_k=5)).results
    top = found[0]
    assert top.memory.type == memory_pb2.MEMORY_TYPE_FACT and top.memory.text == f"user: {aside}"
    assert [s.turn_id for s in top.memory.provenance.sources] == ["T1"]
    assert top.text.startswith(f"user: {aside}")  # the assistant's reply may follow it in the span
    # The statement stands for the turn that says it: the rest of that turn is not repeated.
    assert not any(request in r.text or packing in r.text for r in found)


async def _fetched_beside(mesh, cube, question, field, expected, other_speaker):
    """Ask the vault for the best memory with its ``field`` (replies or questions): they are the
    ``expected`` texts, come without index_context, only when asked for, and match the filter."""

    async def best(**fields):
        return await mesh.client.vault.Query(
            vault_pb2.QueryRequest(cube_id=cube, text=question, limit=1, **fields)
        )

    found = await best(**{field: 1})
    assert [m.text for m in getattr(found, field)] == expected
    assert not getattr(found, field)[0].index_context
    assert not getattr(await best(), field)
    only_other = vault_pb2.MemoryFilter(speaker=other_speaker)
    assert not getattr(await best(**{field: 1}, filter=only_other), field)
    return found


async def test_the_reply_to_a_question_comes_with_it_though_it_shares_no_word(mesh, cube):
    turns = [
        ("Nate", "Congrats on finishing it! What genre is your screenplay?"),
        ("Joanna", "A mix of drama and romance!"),
        ("Nate", "I spent the weekend playing video games with my turtles nearby."),
    ]
    await mesh.client.add_messages(
        cube,
        [
            {"id": f"D1:{i}", "speaker": who, "text": text, "session_id": "S1"}
            for i, (who, text) in enumerate(turns, 1)
        ],
        wait_applied=True,
    )
    question = "What genre is the screenplay?"

    found = await _fetched_beside(
        mesh, cube, question, "replies", ["Joanna: A mix of drama and romance!"], other_speaker="Nate"
    )
    assert [r.memory.text for r in found.results] == [f"Nate: {turns[0][1]}"]
    # A search puts the reply in the question's span.
    top = (await mesh.client.search(cube, question, top_k=1)).results[0]
    assert [s.turn_id for m in top.span for s in m.provenance.sources][:2] == ["D1:1", "D1:2"]


async def test_turns_added_one_request_at_a_time_are_neighbours(mesh, cube):
    turns = [
        ("Nate", "Congrats on finishing it! What genre is your screenplay?"),
        ("Joanna", "A mix of drama and romance!"),
        ("Nate", "I spent the weekend playing video games with my turtles nearby."),
    ]
    for i, (who, text) in enumerate(turns, 1):  # a chat app adds each turn as it is said
        await mesh.client.add_messages(
            cube, [{"id": f"D1:{i}", "speaker": who, "text": text, "session_id": "S1"}], wait_applied=True
        )
    listed = {m.provenance.sources[0].turn_id: m async for m in mesh.client.iter_memories(cube)}
    positions = sorted(m.provenance.sources[0].position for m in listed.values())
    assert positions == [positions[0], positions[0] + 1, positions[0] + 2]
    # A short reply is indexed with the question said in the request before.
    assert listed["D1:2"].index_context.endswith(f"Nate: {turns[0][1]} Joanna: {turns[1][1]}")
    # A query's hits come without it (an index key, never injected); a read has it.
    hits = await mesh.client.vault.Query(
        vault_pb2.QueryRequest(cube_id=cube, text="drama and romance", limit=3)
    )
    hit = next(r.memory for r in hits.results if r.memory.name == listed["D1:2"].name)
    assert not hit.index_context
    assert (await mesh.client.get(hit.name)).index_context == listed["D1:2"].index_context
    # So a search puts the reply, said in the next request, in the question's span.
    top = (await mesh.client.search(cube, "What genre is the screenplay?", top_k=1)).results[0]
    assert [s.turn_id for m in top.span for s in m.provenance.sources][:2] == ["D1:1", "D1:2"]


async def test_a_reply_comes_with_the_question_it_answers(mesh, cube):
    asked = "How should I fill my 40-minute bus commute each way?"
    padding = " ".join(f"Tip {i}: keep a small notebook and write down one idea per stop." for i in range(8))
    answer = "For history, try Hardcore History by Dan Carlin, a long-form podcast series."
    await mesh.client.add_messages(
        cube,
        [
            {"id": "T1", "speaker": "user", "text": asked, "session_id": "S1"},
            {
                "id": "T2",
                "speaker": "assistant",
                "text": f"{padding}\n\n{padding}\n\n{answer}",
                "session_id": "S1",
            },
        ],
        wait_applied=True,
    )
    question = "Which history podcast series by Dan Carlin was recommended?"

    found = await _fetched_beside(mesh, cube, question, "questions", [f"user: {asked}"], "assistant")
    (hit,) = found.results
    assert answer in hit.memory.text and hit.memory.provenance.sources[0].piece > 0
    # A search puts the question in the reply's span, before it.
    top = (await mesh.client.search(cube, question, top_k=1)).results[0]
    assert [s.turn_id for m in top.span for s in m.provenance.sources][:2] == ["T1", "T2"]
    assert top.text.startswith(f"user: {asked} assistant: ")


async def test_a_retried_request_writes_nothing_twice(mesh, cube):
    first = await mesh.client.add_messages(cube, CONVERSATION, request_id="req-1", wait_applied=True)
    again = await mesh.client.add_messages(cube, CONVERSATION, request_id="req-1", wait_applied=True)
    assert first.memory_names == again.memory_names
    listed = [m async for m in mesh.client.iter_memories(cube)]
    assert len(listed) == 4


async def test_a_bundle_is_all_searchable_when_its_ingest_returns(mesh, cube):
    # Only the last session's request waits for the vault; the others must be applied by then.
    sessions = [
        {
            "id": f"S{n}",
            "date": f"2:10 pm on {n} June, 2023",
            "turns": [
                {
                    "id": f"D{n}:{i}",
                    "speaker": "Caroline",
                    "text": f"Note {i} of session {n} about the garden.",
                }
                for i in range(1, 4)
            ],
        }
        for n in range(1, 6)
    ]
    written = await ingest_bundle(mesh.client, cube, {"id": "b", "sessions": sessions}, wait_applied=True)
    assert written == 15
    listed = [m async for m in mesh.client.iter_memories(cube)]
    assert sorted(s.turn_id for m in listed for s in m.provenance.sources) == sorted(
        t["id"] for s in sessions for t in s["turns"]
    )


def _notes_bundle(sessions: int, turns: int) -> dict:
    """Sessions S0.. of turns D<session>:0.. ("Note <i>.", all said by Caroline)."""
    return {
        "id": "b",
        "sessions": [
            {
                "id": f"S{n}",
                "turns": [
                    {"id": f"D{n}:{i}", "speaker": "Caroline", "text": f"Note {i}."} for i in range(turns)
                ],
            }
            for n in range(sessions)
        ],
    }


async def _stored_by_session(mesh, cube: str) -> dict[str, list[tuple[int, str]]]:
    """(position, turn id) of each memory's first source, by session, in position order."""
    said: dict[str, list[tuple[int, str]]] = {}
    async for m in mesh.client.iter_memories(cube):
        source = m.provenance.sources[0]
        said.setdefault(source.session_id, []).append((source.position, source.turn_id))
    return {session: sorted(turns) for session, turns in said.items()}


async def test_a_bundle_ingested_a_turn_a_call_numbers_each_session_on(mesh, cube):
    bundle = _notes_bundle(sessions=2, turns=3)
    assert await ingest_bundle(mesh.client, cube, bundle, max_batch=1, wait_each=True) == 6
    numbers = {
        session: [n for n, _ in turns] for session, turns in (await _stored_by_session(mesh, cube)).items()
    }
    assert numbers == {"S0": [1, 2, 3], "S1": [1, 2, 3]}


async def test_get_list_update_versions_delete(mesh, cube):
    added = await mesh.client.add_messages(cube, CONVERSATION, wait_applied=True)
    name = added.memory_names[0]

    memory = await mesh.client.get(name)
    assert memory.version == 1 and memory.cube_id == cube

    first = await mesh.client.list_page(cube, page_size=3)
    assert len(first.memories) == 3 and first.next_page_token
    second = await mesh.client.list_page(cube, page_size=3, page_token=first.next_page_token)
    assert len(second.memories) == 1 and not second.next_page_token
    assert {m.name for m in [*first.memories, *second.memories]} == set(added.memory_names)
    only_melanie = [m async for m in mesh.client.iter_memories(cube, speaker="Melanie")]
    assert {m.speaker for m in only_melanie} == {"Melanie"} and len(only_melanie) == 2

    updated = await mesh.client.update(name, text="Caroline went to an LGBTQ support group on 7 May 2023.")
    assert updated.version == 2
    assert (await mesh.client.get(name)).text.startswith("Caroline went to an LGBTQ")
    versions = await mesh.client.versions(name)
    assert [v.version for v in versions] == [2, 1]
    assert versions[1].text == memory.text  # the old version is kept
    found = await mesh.client.search(cube, "support group on 7 May", top_k=1)
    assert found.results[0].memory.version == 2

    with pytest.raises(MemosAPIError) as stale:
        await mesh.client.update(name, text="x", expected_version=1)
    assert stale.value.code == grpc.StatusCode.ABORTED and stale.value.reason == "VERSION_MISMATCH"

    deleted = await mesh.client.delete(name)
    assert deleted.version == 2
    with pytest.raises(MemosAPIError) as gone:
        await mesh.client.get(name)
    assert gone.value.code == grpc.StatusCode.NOT_FOUND and gone.value.reason == "MEMORY_NOT_FOUND"
    assert name not in {m.name async for m in mesh.client.iter_memories(cube)}
    found = await mesh.client.search(cube, "support group", top_k=10)
    assert name not in {r.memory.name for r in found.results}

    # A replay of the original write cannot bring a deleted memory back.
    await mesh.client.add_messages(cube, CONVERSATION[:1], wait_applied=True)
    with pytest.raises(MemosAPIError):
        await mesh.client.get(name)


async def published(mesh, subject: str, count: int, write: Callable[[], Awaitable[T]]) -> tuple[T, list]:
    """What ``write`` returns, and the bus messages on ``subject`` while it ran and after, until
    ``count`` of them arrived (or 5 s passed)."""
    nc = await nats_client.connect(mesh.nats.url)
    received = []

    async def collect(msg):
        received.append(msg)

    sub = await nc.subscribe(subject, cb=collect)
    try:
        result = await write()
        for _ in range(100):
            if len(received) >= count:
                break
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()
        await nc.drain()
    return result, received


async def test_memory_events_carry_cloudevents_headers_and_protobuf(mesh, cube):
    async def add_then_delete():
        added = await mesh.client.add_messages(cube, CONVERSATION[:2], wait_applied=True)
        await mesh.client.delete(added.memory_names[0])
        return added

    added, received = await published(mesh, events_subject(cube), 3, add_then_delete)
    events = [decode_event(m.headers, m.data) for m in received]
    created = [e for e in events if e.type == EventKind.MEMORY_CREATED.ce_type]
    assert {e.payload.memory.name for e in created} == set(added.memory_names)
    assert all(isinstance(e.payload, events_pb2.MemoryCreated) for e in created)
    msg = received[0]
    for header in (Header.CE_ID, Header.CE_SOURCE, Header.CE_TIME, Header.MSG_ID, Header.CE_SPECVERSION):
        assert msg.headers.get(header), header
    assert msg.headers[Header.MSG_ID] == msg.headers[Header.CE_ID]
    assert msg.subject == events_subject(cube, EventKind.MEMORY_CREATED)
    deleted = [e for e in events if e.type == EventKind.MEMORY_DELETED.ce_type]
    assert [e.payload.name for e in deleted] == [added.memory_names[0]]


async def test_a_created_event_says_how_close_the_nearest_other_memory_is(mesh, cube):
    texts = [
        "I adopted a greyhound called Max.",
        "I adopted a greyhound named Max last week.",
        "The quarterly tax forms are due in April.",
    ]
    turns = [
        {"id": f"D1:{i}", "speaker": "Caroline", "text": t, "time_text": "8 May, 2023", "session_id": "S1"}
        for i, t in enumerate(texts)
    ] + [
        {"id": "D1:9", "speaker": "Melanie", "text": texts[0], "time_text": "8 May, 2023", "session_id": "S1"}
    ]
    added, received = await published(
        mesh,
        events_subject(cube, EventKind.MEMORY_CREATED),
        4,
        lambda: mesh.client.add_messages(cube, turns, wait_applied=True),
    )
    created = {e.payload.memory.name: e.payload for e in (decode_event(m.headers, m.data) for m in received)}
    dog, dog_again, taxes, melanie = (created[n] for n in added.memory_names)
    # Each is measured against the others of its speaker applied by then (the first may have
    # been applied alone), never against itself; Melanie has no other.
    assert 0.75 < dog_again.nearest_similarity < 0.999
    assert not dog.HasField("nearest_similarity") or 0.75 < dog.nearest_similarity < 0.999
    assert taxes.nearest_similarity < dog_again.nearest_similarity - 0.1
    assert not melanie.HasField("nearest_similarity") and not melanie.neighbours
    # The event names those neighbours, best first; the first is the nearest.
    assert dog_again.neighbours[0].name == dog.memory.name
    assert dog_again.neighbours[0].similarity == dog_again.nearest_similarity
    assert {n.name for n in taxes.neighbours} <= {dog.memory.name, dog_again.memory.name}
    scores = [n.similarity for n in taxes.neighbours]
    assert scores == sorted(scores, reverse=True) and scores[0] == taxes.nearest_similarity


async def test_pieces_and_statements_of_one_turn_are_not_each_others_neighbours(mesh, cube):
    text = (
        "Can you recommend a light travel backpack for a two week trip through the mountains? "
        "I care most about comfort on long walks and a good rain cover. By the way, I did my "
        "study abroad program at the University of Melbourne. Packing cubes and a small first "
        "aid kit are on my list as well."
    )
    turn = {"id": "T1", "speaker": "user", "text": text, "session_id": "S1"}
    items = 1 + len(statements(text))
    added, received = await published(
        mesh,
        events_subject(cube, EventKind.MEMORY_CREATED),
        items,
        lambda: mesh.client.add_messages(cube, [turn], wait_applied=True),
    )
    assert len(added.memory_names) == items > 2
    created = [decode_event(m.headers, m.data).payload for m in received]
    assert not any(c.HasField("nearest_similarity") or c.neighbours for c in created)


async def test_a_digest_of_a_speakers_statements_answers_a_question_that_gathers(
    nats, triton_addr, tmp_path, cube
):
    said = [
        ("user", "I wear my Fitbit smartwatch every single day to count my steps."),
        ("assistant", "That is a great habit for your health goals."),
        ("user", "I also do inhalation treatments with my nebulizer twice a day."),
        ("assistant", "Keep your nebulizer clean after each use."),
        ("user", "I test my blood sugar three times a day with my Accu-Chek meter."),
        ("user", "Can you suggest a good recipe for dinner tonight?"),
        ("assistant", "A lentil soup with carrots and cumin is easy and filling."),
    ]
    turns = [
        {"id": f"T{i}", "speaker": who, "text": text, "session_id": "S1", "time_text": "2023-05-20 10:00"}
        for i, (who, text) in enumerate(said)
    ]
    async with in_process_mesh(nats, triton_addr, tmp_path, reader_settings={"digest_tokens": 150}) as mesh:
        added = await mesh.client.add_messages(cube, turns, wait_applied=True)
        assert len(added.memory_names) == len(turns) + 1  # one digest: the user's statements
        digest = await mesh.client.get(added.memory_names[-1])
        assert digest.type == memory_pb2.MEMORY_TYPE_SUMMARY and digest.speaker == "user"
        assert [s.turn_id for s in digest.provenance.sources] == ["T0", "T2", "T4"]
        assert list(digest.lineage.parent_names) == list(added.memory_names[0:5:2])

        found = await mesh.client.search(cube, "Which health devices do I use every day?", top_k=3)
        # The digest brings all three answers in one item, close behind the best single one.
        assert digest.name in [r.memory.name for r in found.results[:2]]
        listed = await mesh.client.list_page(cube, derived_from=added.memory_names[2])
        assert [m.name for m in listed.memories] == [digest.name]


async def test_a_cube_never_sees_another_cubes_memories(mesh, cube):
    other = cube + "-other"
    await mesh.client.add_messages(cube, CONVERSATION, wait_applied=True)
    secret = {
        "id": "X:1",
        "speaker": "Eve",
        "text": "The vault combination is 4711 and the support group meets Fridays.",
    }
    stored = await mesh.client.add_messages(other, [secret], wait_applied=True)

    found = await mesh.client.search(cube, "vault combination support group Eve 4711", top_k=50)
    assert all(r.memory.cube_id == cube for r in found.results)
    assert all("4711" not in r.memory.text for r in found.results)
    assert all([m.cube_id == cube async for m in mesh.client.iter_memories(cube)])
    # A name from another cube with this cube's prefix is not found.
    foreign_id = stored.memory_names[0].rsplit("/", 1)[1]
    with pytest.raises(MemosAPIError) as err:
        await mesh.client.get(f"cubes/{cube}/memories/{foreign_id}")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


async def test_add_document_chunks_a_document(mesh, cube):
    text = "\n\n".join(f"Paragraph {i} talks about topic number {i} in some detail." for i in range(6))
    reply = await mesh.client.add_document(cube, text, title="Handbook", wait_applied=True)
    assert len(reply.memory_names) >= 1
    found = await mesh.client.search(cube, "topic number 4", top_k=1)
    assert "topic number 4" in found.results[0].memory.text


async def test_watch_yields_events_as_they_happen(mesh, cube):
    seen = []

    async def watch() -> None:
        async for event in mesh.client.watch(cube):
            seen.append(event)
            if len(seen) == 2:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)  # subscribed before the writes
    added = await mesh.client.add_messages(cube, CONVERSATION[:2], wait_applied=True)
    await asyncio.wait_for(watcher, timeout=30)
    assert {e.payload.memory.name for e in seen} == set(added.memory_names)
    assert all(e.type == EventKind.MEMORY_CREATED.ce_type for e in seen)


LEGACY_ID = "0123456789abcdef0123456789abcdef"


async def test_a_write_logged_before_writes_were_sealed_is_still_applied(mesh, cube):
    """A mesh upgraded from before sealing replays its old, unsealed puts into the new index."""
    memory = memory_pb2.Memory(
        name=f"cubes/{cube}/memories/{LEGACY_ID}",
        cube_id=cube,
        memory_id=LEGACY_ID,
        version=1,
        text="[8 May 2023] Caroline: I keep bees.",
        speaker="Caroline",
        create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        provenance=memory_pb2.Provenance(principal="principals/local"),
    )
    vector = np.random.default_rng(0).normal(size=384).astype(np.float32)
    put = commands_pb2.PutMemory(memory=memory, embedding=(vector / np.linalg.norm(vector)).tolist())
    nc = await nats_client.connect(mesh.endpoints.nats_url)
    try:
        js = nc.jetstream()
        seq, _ = await publish(
            js,
            writes_subject(cube),
            commands_pb2.WriteCommand(put=put).SerializeToString(),
            msg_id="legacy-1",
        )
        await wait_applied(js, seq, timeout_seconds=30)
    finally:
        await nc.close()
    stored = await mesh.client.get(memory.name)
    assert stored.text == memory.text
    assert stored.provenance.principal == "principals/local"


async def test_sessions_written_side_by_side_keep_their_own_order_and_all_are_searchable(mesh, cube):
    bundle = _notes_bundle(sessions=4, turns=5)
    assert await ingest_bundle(mesh.client, cube, bundle, max_batch=2, in_flight=3) == 20
    stored = await _stored_by_session(mesh, cube)  # every request applied when it returns
    assert {session: [turn for _, turn in turns] for session, turns in stored.items()} == {
        f"S{n}": [f"D{n}:{i}" for i in range(5)] for n in range(4)
    }
