import datetime as dt

import numpy as np
from google.protobuf import timestamp_pb2

from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens
from services.common import places
from services.reader.extract import (
    Turn,
    chunk_text,
    context_after_earlier,
    derived_embeddings,
    document_items,
    embedded,
    pieces_per_session,
    statements,
    turn_items,
)

NOW = timestamp_pb2.Timestamp(seconds=1_700_000_000)
WHEN = dt.datetime(2023, 5, 8, 13, 56, tzinfo=dt.UTC)


def _items(turns):
    return turn_items(
        "c1", turns, piece_tokens=120, context_tokens=48, request_id="r1", principal="principals/p", now=NOW,
        numbered_from={},
    )  # fmt: skip


def test_one_item_per_turn_with_date_speaker_and_source():
    turn = Turn(
        id="D1:3", speaker="Caroline", text="I went to the support group.", session_id="S1", time=WHEN
    )
    (item,) = _items([turn])
    assert item.text == "[8 May 2023] Caroline: I went to the support group."
    assert item.speaker == "Caroline"
    assert [s.turn_id for s in item.provenance.sources] == ["D1:3"]
    assert item.provenance.sources[0].session_id == "S1"
    assert item.event_time.ToDatetime(tzinfo=dt.UTC) == WHEN
    assert item.version == 1
    assert item.kind == memory_pb2.MEMORY_KIND_PLAINTEXT
    assert item.name == f"cubes/c1/memories/{item.memory_id}"


def test_memory_ids_are_deterministic_per_turn_and_distinct_across_turns():
    a = Turn(id="D1:1", speaker="a", text="x", session_id="", time=None)
    b = Turn(id="D1:2", speaker="a", text="x", session_id="", time=None)
    first, second = _items([a, b])
    assert first.memory_id != second.memory_id
    assert _items([a])[0].memory_id == first.memory_id


def test_image_caption_is_part_of_the_item_and_no_date_without_time():
    turn = Turn(
        id="t", speaker="Mel", text="Look!", session_id="", time=None, image_caption="a sunset over a lake"
    )
    (item,) = _items([turn])
    assert item.text == "Mel: Look! [shared an image: a sunset over a lake]"
    assert not item.HasField("event_time")


def test_chunks_respect_the_target_and_keep_every_word():
    text = "\n\n".join(" ".join(f"word{p}_{i}." for i in range(30)) for p in range(5))
    chunks = chunk_text(text, target_tokens=40)
    assert all(count_tokens(c) <= 40 for c in chunks)
    assert " ".join(chunks).split() == " ".join(text.split()).split()


def test_document_items_have_distinct_ids_and_the_document_as_source():
    items = document_items(
        "c1",
        document_id="doc1",
        title="Notes",
        text="First paragraph here.\n\nSecond paragraph here.",
        time=None,
        tags=["t"],
        target_tokens=5,
        request_id="r",
        principal="p",
        now=NOW,
    )
    assert len(items) == 2
    assert len({i.memory_id for i in items}) == 2
    assert all(i.provenance.sources[0].document_id == "doc1" and i.text.startswith("Notes: ") for i in items)


def _session(*said, session="S1"):
    return [
        Turn(id=f"{session}:{i}", speaker=speaker, text=text, session_id=session, time=WHEN)
        for i, (speaker, text) in enumerate(said)
    ]


def test_relative_dates_are_resolved_in_the_item():
    (item,) = _items(_session(("Caroline", "I went to the support group yesterday.")))
    assert item.text == "[8 May 2023] Caroline: I went to the support group yesterday (7 May 2023)."


def test_long_turns_become_pieces_with_the_same_source_and_consecutive_positions():
    long_text = " ".join(f"Sentence number {i} says something new." for i in range(60))
    items = turn_items(
        "c1", _session(("user", long_text)), piece_tokens=40, context_tokens=0,
        request_id="r1", principal="p", now=NOW, numbered_from={},
    )  # fmt: skip
    assert len(items) > 5
    assert all(count_tokens(i.text) <= 40 + 12 for i in items)  # a piece plus "[date] user: "
    assert {s.turn_id for i in items for s in i.provenance.sources} == {"S1:0"}
    positions = [i.provenance.sources[0].position for i in items]
    assert positions == list(range(positions[0], positions[0] + len(items)))
    assert [i.provenance.sources[0].piece for i in items] == list(range(len(items)))
    assert len({i.memory_id for i in items}) == len(items)
    words = " ".join(i.text.split(": ", 1)[1] for i in items).split()
    assert words == long_text.split()


def test_the_turn_before_a_piece_ends_right_before_its_turns_first_piece():
    long_text = " ".join(f"Sentence number {i} says something new." for i in range(30))
    items = turn_items(
        "c1", _session(("user", "How do I plan my commute?"), ("assistant", long_text)), piece_tokens=40,
        context_tokens=0, request_id="r1", principal="p", now=NOW, numbered_from={},
    )  # fmt: skip
    question, *reply = items
    assert len(reply) > 2
    assert {places.turn_before(piece) for piece in reply} == {places.place(question)}


def test_short_turns_are_indexed_with_their_neighbours_in_the_same_session():
    turns = _session(("Mel", "Did you go to the pottery class?"), ("Caroline", "Yes, loved it!"))
    turns += _session(("Mel", "Other session."), session="S2")
    question, answer, other = _items(turns)
    assert answer.text == "[8 May 2023] Caroline: Yes, loved it!"
    assert (
        answer.index_context == "[8 May 2023] Mel: Did you go to the pottery class? Caroline: Yes, loved it!"
    )
    assert question.index_context.endswith("Caroline: Yes, loved it!")
    assert other.index_context == ""  # alone in its session


def test_a_session_continued_in_a_new_request_takes_the_piece_said_before_into_its_context():
    first = _items(_session(("Mel", "Did you go to the pottery class?")))
    (question,) = first
    taken = {"S1": question.provenance.sources[0].position}
    turns = [
        Turn("S1:1", "Caroline", "Yes, loved it!", "S1", WHEN),
        Turn("S1:2", "Mel", "Great news.", "S1", WHEN),
    ]
    answer, after = turn_items(
        "c1", turns, piece_tokens=120, context_tokens=48, request_id="r2", principal="p", now=NOW,
        numbered_from=taken, said_before={"S1": question},
    )  # fmt: skip
    assert answer.index_context.startswith("[8 May 2023] Mel: Did you go to the pottery class? Caroline:")
    assert after.index_context.startswith("[8 May 2023] Caroline: Yes, loved it!")  # its own request's
    # Only the first piece's key is made from a piece whose vector the request does not have.
    assert context_after_earlier([answer, after], {"S1": question}) == [answer]
    assert context_after_earlier([answer, after], {}) == []


def test_each_session_is_numbered_on_from_the_number_the_request_took_for_it():
    turns = [
        Turn("t1", "a", "one", "s1", None),
        Turn("t2", "b", "two", "s2", None),
        Turn("t3", "a", "three", "s1", None),
    ]
    items = turn_items(
        "c1", turns, piece_tokens=120, context_tokens=48, request_id="r2", principal="p", now=NOW,
        numbered_from={"s1": 7},
    )  # fmt: skip
    numbers = {i.provenance.sources[0].turn_id: i.provenance.sources[0].position for i in items}
    assert numbers == {"t1": 8, "t2": 1, "t3": 9}  # s2 took none: it starts at 1
    assert pieces_per_session(turns, 120) == {"s1": 2, "s2": 1}


def test_statements_are_what_a_speaker_tells_of_themselves():
    text = (
        "I'm excited to host the gathering. Speaking of which, I've added 25 new postcards to my "
        "collection since I started again. Can you help me plan it? I'd suggest you start early. "
        "The weather looks fine. Thanks! We watched the game, you know, with pizza."
    )
    assert statements(text) == [
        "I'm excited to host the gathering.",
        "Speaking of which, I've added 25 new postcards to my collection since I started again.",
        "We watched the game, you know, with pizza.",
    ]


def test_long_pieces_also_give_their_statements_as_unnumbered_facts():
    aside = "By the way, I volunteered at the shelter's fundraising dinner last week."
    text = "Can you recommend events for animal lovers? " + aside + " " + "Filler words here. " * 20
    turns = _session(("user", text), ("assistant", "Sure, here are some events near you."))
    items = turn_items(
        "c1", turns, piece_tokens=120, context_tokens=48, statement_piece_tokens=60,
        request_id="r1", principal="p", now=NOW, numbered_from={},
    )  # fmt: skip
    piece, fact, reply = items
    assert piece.type == memory_pb2.MEMORY_TYPE_TURN
    assert fact.type == memory_pb2.MEMORY_TYPE_FACT
    assert fact.text == (
        "[8 May 2023] user: By the way, I volunteered at the shelter's fundraising dinner last week (the week of 1 May 2023)."
    )
    assert [s.turn_id for s in fact.provenance.sources] == ["S1:0"]
    assert fact.provenance.sources[0].position == 0  # never joined to neighbours
    assert fact.event_time == piece.event_time and fact.speaker == "user"
    assert fact.provenance.producer == "reader/statement"
    assert len({piece.memory_id, fact.memory_id, reply.memory_id}) == 3
    # short turns stay whole, and the feature is off at 0
    assert len(_items(turns)) == 2


def _digest_items(turns, digest_tokens=150):
    return turn_items(
        "c1", turns, piece_tokens=120, context_tokens=48, statement_piece_tokens=60,
        digest_tokens=digest_tokens, request_id="r1", principal="p", now=NOW, numbered_from={},
    )  # fmt: skip


def test_a_speakers_statements_of_a_session_are_gathered_into_a_digest_sourced_to_their_turns():
    aside = "By the way, I've been wearing my Fitbit every day since I got it."
    long_turn = "Can you help me with my sleep schedule? " + aside + " " + "Filler words here. " * 20
    turns = _session(
        ("user", long_turn),
        ("assistant", "Sure, I can help you with that."),
        ("user", "I also use a nebulizer twice a day."),
        ("user", "What else should I track?"),
    )
    items = _digest_items(turns)
    (digest,) = [i for i in items if i.type == memory_pb2.MEMORY_TYPE_SUMMARY]
    assert items[-1] is digest  # after the items it is made of
    assert digest.text == (
        "[8 May 2023] user: By the way, I've been wearing my Fitbit every day since I got it. "
        "I also use a nebulizer twice a day."
    )
    assert [s.turn_id for s in digest.provenance.sources] == ["S1:0", "S1:2"]
    assert all(s.position == 0 for s in digest.provenance.sources)  # never joined to neighbours
    assert digest.speaker == "user" and digest.provenance.producer == "reader/digest"
    # Its parents are the items that say its statements: the long turn's fact, the short turn itself.
    by_name = {i.name: i for i in items}
    fact, short = (by_name[n] for n in digest.lineage.parent_names)
    assert fact.type == memory_pb2.MEMORY_TYPE_FACT and fact.text.endswith(aside)
    assert short.type == memory_pb2.MEMORY_TYPE_TURN and short.provenance.sources[0].turn_id == "S1:2"
    assert digest.memory_id == _digest_items(turns)[-1].memory_id  # deterministic
    assert not [i for i in _digest_items(turns, digest_tokens=0) if i.type == memory_pb2.MEMORY_TYPE_SUMMARY]


def test_digests_are_per_speaker_and_session_cut_to_their_budget_and_need_two_statements():
    said = [("user", f"I visited museum number {n} with my sister last year.") for n in range(6)]
    turns = _session(*said) + _session(("user", "I own a red bicycle."), session="S2")
    items = _digest_items(turns, digest_tokens=30)
    digests = [i for i in items if i.type == memory_pb2.MEMORY_TYPE_SUMMARY]
    assert all(count_tokens(d.text.split(": ", 1)[1]) <= 30 for d in digests)
    quoted = [s.turn_id for d in digests for s in d.provenance.sources]
    assert quoted == [f"S1:{n}" for n in range(6)]  # in order, each once; S2 has one statement only
    assert len({d.memory_id for d in digests}) == len(digests) >= 2


def test_the_model_embeds_all_but_digests_whose_key_is_the_normalised_mean_of_their_parents():
    turns = _session(
        ("user", "I also use a nebulizer twice a day."), ("user", "I run five miles every single morning.")
    )
    items = _digest_items(turns)
    digest = items[-1]
    assert embedded(items) == items[:-1]
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    keys = derived_embeddings(items, {items[0].name: a, items[1].name: b})
    assert list(keys) == [digest.name]
    assert np.allclose(keys[digest.name], [2**-0.5, 2**-0.5, 0.0])
