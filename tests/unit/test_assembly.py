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
