from memos.type.v1 import memory_pb2
from services.scheduler.retrieval import favour_named_speakers


def _found(*said):
    return [
        memory_pb2.ScoredMemory(memory=memory_pb2.Memory(name=f"m{i}", speaker=speaker), score=score)
        for i, (speaker, score) in enumerate(said)
    ]


def test_memories_of_the_speaker_a_query_names_move_up():
    found = _found(("Caroline", 0.80), ("Melanie", 0.75), ("Caroline", 0.60))
    ranked = favour_named_speakers("What did melanie paint last week?", found, 0.1)
    assert [(m.memory.name, round(m.score, 2)) for m in ranked] == [("m1", 0.85), ("m0", 0.8), ("m2", 0.6)]


def test_no_speaker_named_or_every_speaker_named_changes_nothing():
    for query in ("What was painted?", "What did Caroline tell Melanie?", "Is Melanies' art new?"):
        found = _found(("Caroline", 0.80), ("Melanie", 0.75))
        ranked = favour_named_speakers(query, found, 0.1)
        assert [(m.memory.name, m.score) for m in ranked] == [("m0", 0.8), ("m1", 0.75)]
