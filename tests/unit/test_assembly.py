from memos.type.v1 import memory_pb2
from memos_sdk.tokens import count_tokens
from services.scheduler.assembly import assemble


def _candidates(*texts):
    return [
        memory_pb2.ScoredMemory(memory=memory_pb2.Memory(name=f"m{i}", text=t), score=1.0 / (i + 1))
        for i, t in enumerate(texts)
    ]


def test_token_count_follows_the_benchmark_regex():
    assert count_tokens("Caroline's dog, Rex!") == 7  # Caroline ' s dog , Rex !


def test_keeps_rank_order_and_top_k():
    chosen = assemble(_candidates("a", "b", "c"), top_k=2, token_budget=0)
    assert [c.memory.name for c in chosen] == ["m0", "m1"]


def test_items_that_do_not_fit_are_skipped_not_cut():
    chosen = assemble(_candidates("one two three", "a b c d e f g h", "four"), top_k=10, token_budget=5)
    assert [c.memory.text for c in chosen] == ["one two three", "four"]
    assert sum(c.tokens for c in chosen) <= 5


def test_exact_repeats_are_dropped():
    chosen = assemble(_candidates("Same  text", "same text", "other"), top_k=10, token_budget=0)
    assert [c.memory.name for c in chosen] == ["m0", "m2"]


def _turn(name, text, score, position, session="S1", piece=0):
    said = text.split("] ")[-1]  # "[8 May 2023] Mel: ..." is said by Mel
    memory = memory_pb2.Memory(name=name, text=text, speaker=said.split(":")[0] if ":" in said else "")
    memory.provenance.sources.append(
        memory_pb2.SourceRef(turn_id=name, session_id=session, position=position, piece=piece)
    )
    return memory_pb2.ScoredMemory(memory=memory, score=score)


def test_neighbours_that_match_well_join_the_hit_in_session_order():
    candidates = [
        _turn("q", "[8 May 2023] Mel: Where did you go?", 1.0, 11),
        _turn("far", "[9 May 2023] Mel: Unrelated.", 0.9, 40),
        _turn("a", "[8 May 2023] Caroline: To the lake.", 0.8, 12),
        _turn("b", "[8 May 2023] Mel: Nice!", 0.5, 13),  # below 0.7 of the hit: stays out
    ]
    first, second, third = assemble(candidates, top_k=10, token_budget=0, join_ratio=0.7)
    assert [m.name for m in first.span] == ["q", "a"]
    assert first.memory.name == "q"
    assert first.text == "[8 May 2023] Mel: Where did you go? Caroline: To the lake."
    assert first.tokens == count_tokens(first.text)
    assert [c.memory.name for c in (second, third)] == ["far", "b"]


def test_a_span_costs_its_members_stored_counts_less_the_date_lines_it_drops():
    candidates = [
        _turn("q", "[8 May 2023] Mel: Where did you go, Caroline?", 1.0, 11),
        _turn("a", "[8 May 2023] Caroline: To the lake -- it's 3km away.", 0.9, 12),
        _turn("b", "[8 May 2023] Mel:  Nice!!", 0.8, 13),
        _turn("c", "[9 May 2023] Mel: Next day.", 0.9, 14),  # another date: it stays
    ]
    for c in candidates:
        c.memory.tokens = count_tokens(c.memory.text)  # as the vault stores them
    (item,) = assemble(candidates, top_k=10, token_budget=0, join_ratio=0.7, max_span=4)
    assert item.text.count("[8 May 2023]") == 1 and "[9 May 2023]" in item.text
    assert item.tokens == count_tokens(item.text)
    for c in candidates:
        c.memory.tokens = 0  # none stored (not read from the vault): counted
    (again,) = assemble(candidates, top_k=10, token_budget=0, join_ratio=0.7, max_span=4)
    assert again.tokens == item.tokens


def test_the_reply_to_a_question_joins_it_however_it_scores():
    candidates = [
        _turn("q", "[8 May 2023] Mel: What did you paint last week?", 1.0, 5),
        _turn("far", "[9 May 2023] Mel: Unrelated.", 0.9, 40),
        _turn("a", "[8 May 2023] Caroline: A sunset over the lake.", 0.2, 6),
        _turn("b", "[8 May 2023] Mel: Lovely.", 0.1, 7),  # a reply to an answer: stays out
    ]
    first, *_ = assemble(candidates, top_k=10, token_budget=0, join_ratio=0.7)
    assert [m.name for m in first.span] == ["q", "a"]
    # a reply longer than reply_tokens joins only on its score
    first, *_ = assemble(candidates, top_k=10, token_budget=0, join_ratio=0.7, reply_tokens=5)
    assert [m.name for m in first.span] == ["q"]
    # a statement stands for its piece and asks nothing: the reply to the piece's question stays out
    fact = _fact("f", "[8 May 2023] user: I got 25 new postcards.", 1.0)
    piece = _turn("S1:4", "[8 May 2023] user: I got 25 new postcards. Where can I frame them?", 0.6, 5)
    reply = _turn("r", "[8 May 2023] assistant: Try a craft store.", 0.2, 6)
    assert [m.name for m in assemble([fact, piece, reply], top_k=10, token_budget=0)[0].span] == ["f"]
    # the turn before a hit is not joined unless it scores, or asks what the hit answers
    told_first = [_turn("a", "Caroline: A sunset.", 1.0, 6), _turn("t", "Mel: I painted too.", 0.2, 5)]
    assert [len(c.span) for c in assemble(told_first, top_k=10, token_budget=0)] == [1, 1]


def test_a_reply_takes_the_question_it_answers_however_it_scores():
    # the hit is the third piece of a long reply; the question ends right before the reply
    reply = _turn(
        "r", "[26 May 2023] assistant: Keep the history podcasts for the ride home.", 1.0, 8, piece=2
    )
    far = _turn("far", "[9 May 2023] user: Unrelated.", 0.9, 40)
    asked = _turn("q", "[26 May 2023] user: How should I plan podcasts for my 40-minute commute?", 0.1, 5)
    told = _turn("t", "[26 May 2023] user: I like history.", 0.1, 5)
    me = _turn("m", "[26 May 2023] assistant: Shall I go on?", 0.1, 5)

    def spans(*candidates, **options):
        chosen = assemble(candidates, top_k=10, token_budget=0, **options)
        return [[m.name for m in c.span] for c in chosen]

    # fetched by the vault, it joins the span and is no item of its own
    chosen = assemble([reply, far], top_k=10, token_budget=0, questions=[asked.memory])
    assert [[m.name for m in c.span] for c in chosen] == [["q", "r"], ["far"]]
    assert chosen[0].text == (
        "[26 May 2023] user: How should I plan podcasts for my 40-minute commute? "
        "assistant: Keep the history podcasts for the ride home."
    )
    assert spans(reply, far, asked) == [["q", "r"], ["far"]]  # among the candidates, the same
    # too long, not a question, or said by the replier: it stays out
    assert spans(reply, far, asked, question_tokens=5) == [["r"], ["far"], ["q"]]
    assert spans(reply, far, told) == [["r"], ["far"], ["t"]]
    assert spans(reply, far, me) == [["r"], ["far"], ["m"]]
    assert spans(reply, far, asked, question_tokens=0) == [["r"], ["far"], ["q"]]
    # neighbours still join past it, and the question counts toward max_span
    before = _turn("b", "[26 May 2023] assistant: Podcasts are great on a bus.", 0.8, 4)
    solo = _turn("r", "[26 May 2023] assistant: Start with history.", 1.0, 6)
    assert spans(solo, asked, before) == [["b", "q", "r"]]
    assert spans(solo, asked, before, max_span=2) == [["q", "r"], ["b"]]


def test_a_reply_the_vault_added_joins_its_question_and_is_no_item_of_its_own():
    candidates = [
        _turn("q", "[8 May 2023] Mel: What genre is it?", 1.0, 5),
        _turn("far", "[9 May 2023] Mel: Unrelated.", 0.9, 40),
    ]
    replies = [
        _turn("a", "[8 May 2023] Caroline: Drama and romance!", 0.0, 6).memory,
        _turn("other", "[9 May 2023] Caroline: Not after a question.", 0.0, 41).memory,
    ]
    chosen = assemble(candidates, top_k=10, token_budget=0, replies=replies)
    assert [[m.name for m in c.span] for c in chosen] == [["q", "a"], ["far"]]
    assert chosen[0].text == "[8 May 2023] Mel: What genre is it? Caroline: Drama and romance!"
    # a long reply does not join, and is not taken alone either
    chosen = assemble(candidates, top_k=10, token_budget=0, replies=replies, reply_tokens=3)
    assert [[m.name for m in c.span] for c in chosen] == [["q"], ["far"]]


def test_no_join_across_sessions_gaps_or_with_max_span_one():
    candidates = [
        _turn("x", "x", 1.0, 5),
        _turn("y", "y", 0.99, 6, session="S2"),
        _turn("z", "z", 0.98, 7),  # position 6 of S1 is missing: not a neighbour
    ]
    assert [len(c.span) for c in assemble(candidates, top_k=10, token_budget=0)] == [1, 1, 1]
    joined = [_turn("x", "x", 1.0, 5), _turn("w", "w", 0.9, 6)]
    assert [len(c.span) for c in assemble(joined, top_k=10, token_budget=0, max_span=1)] == [1, 1]


def test_a_span_over_budget_falls_back_to_its_best_memory():
    candidates = [_turn("q", "one two three", 1.0, 1), _turn("a", "four five six seven", 0.9, 2)]
    (only,) = assemble(candidates, top_k=10, token_budget=5)
    assert [m.name for m in only.span] == ["q"]
    assert only.text == "one two three"


def _fact(name, text, score, speaker="user"):
    memory = memory_pb2.Memory(name=name, text=text, speaker=speaker, type=memory_pb2.MEMORY_TYPE_FACT)
    memory.provenance.sources.append(memory_pb2.SourceRef(turn_id="S1:4", session_id="S1"))
    return memory_pb2.ScoredMemory(memory=memory, score=score)


def test_a_statement_the_chosen_turn_says_is_dropped():
    turn = _turn("t", "[8 May 2023] user: Plan my party. By the way, I got 25 new  postcards.", 0.9, 5)
    fact = _fact("f", "[8 May 2023] user: By the way, I got 25 new postcards.", 0.8)
    assert [c.memory.name for c in assemble([turn, fact], top_k=10, token_budget=0)] == ["t"]


def test_a_statement_takes_its_pieces_place_among_the_pieces_neighbours():
    fact = _fact("f", "[8 May 2023] user: By the way, I got 25 new postcards.", 1.0)
    piece = _turn("S1:4", "[8 May 2023] user: Plan my party. By the way, I got 25 new postcards.", 0.6, 5)
    reply = _turn("r", "[8 May 2023] assistant: Congratulations on the postcards!", 0.5, 6)
    other = _turn("o", "[9 May 2023] user: I sold my bike.", 0.4, 1, session="S2")
    first, second = assemble([fact, piece, reply, other], top_k=10, token_budget=0)
    # the reply joins as it would join the piece (0.5 >= 0.7 * 0.6), the piece is not repeated
    assert [m.name for m in first.span] == ["f", "r"] and (first.memory.name, first.score) == ("f", 1.0)
    assert (
        first.text
        == "[8 May 2023] user: By the way, I got 25 new postcards. assistant: Congratulations on the postcards!"
    )
    assert second.memory.name == "o"


def test_a_statement_alone_under_a_budget_still_stands_for_its_piece():
    fact = _fact("f", "[8 May 2023] user: By the way, I got 25 new postcards.", 1.0)
    piece = _turn("S1:4", "[8 May 2023] user: Plan my party. By the way, I got 25 new postcards.", 0.9, 5)
    reply = _turn(
        "r",
        "[8 May 2023] assistant: Congratulations! Where will you keep them all, and which one do you like "
        "best? Do tell me more about the collection.",
        0.8,
        6,
    )
    other = _fact("o", "[9 May 2023] user: I sold my bike to a neighbour.", 0.7)
    budget = count_tokens(fact.memory.text) + count_tokens(piece.memory.text) + 1
    chosen = assemble([fact, piece, reply, other], top_k=10, token_budget=budget)
    # the span with the reply does not fit: the statement alone; its piece would fit, but is not taken
    assert [[m.name for m in c.span] for c in chosen] == [["f"], ["o"]]
    assert [c.memory.name for c in assemble([fact, piece], top_k=10, token_budget=0)] == ["f"]


def test_a_long_span_must_match_better_to_come_before_short_items():
    long_answer = " ".join(["word"] * 300)
    candidates = [
        _turn("q", f"[8 May 2023] user: Which tent? assistant: {long_answer}", 1.0, 5),
        _turn("short", "[9 May 2023] user: I bought the green tent.", 0.9, 1, session="S2"),
    ]
    # 300 tokens beyond the 120 free ones cost 0.3 at 0.1 per 100: the short item comes first
    first, second = assemble(candidates, top_k=10, token_budget=0, length_cost=0.1, free_tokens=120)
    assert [first.memory.name, second.memory.name] == ["short", "q"]
    assert first.score == 0.9 and round(second.score, 4) == round(1.0 - 0.1 * (second.tokens - 120) / 100, 4)
    # no cost, or a span that scores well enough: rank order
    assert [c.memory.name for c in assemble(candidates, top_k=10, token_budget=0)] == ["q", "short"]
    candidates[1].score = 0.5
    assert [c.memory.name for c in assemble(candidates, top_k=10, token_budget=0, length_cost=0.1)] == [
        "q",
        "short",
    ]
    # top_k is cut after the ranking, so the short item is the one kept
    candidates[1].score = 0.9
    assert [c.memory.name for c in assemble(candidates, top_k=1, token_budget=0, length_cost=0.1)] == [
        "short"
    ]


def test_items_that_show_only_turns_shown_before_come_after_new_turns():
    first, second = (
        _turn("p1", "assistant: Take the JR line.", 1.0, 11),
        _turn("p2", "assistant: Or a taxi.", 0.9, 12),
    )
    for memory in (first.memory, second.memory):
        memory.provenance.sources[0].turn_id = "S1:3"  # two pieces of one long turn
    other = _turn("S1:6", "user: I have a Suica card.", 0.5, 20)
    chosen = assemble([first, second, other], top_k=10, token_budget=0, join_ratio=0.95)
    assert [c.memory.name for c in chosen] == ["p1", "S1:6", "p2"]
    # with no turns to tell them apart (documents), the rank order stays
    plain = _candidates("a", "b", "c")
    assert [c.memory.name for c in assemble(plain, top_k=10, token_budget=0)] == ["m0", "m1", "m2"]
