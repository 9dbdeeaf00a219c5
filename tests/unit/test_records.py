"""A record in the index: the memory sealed with its subject key, its index context sealed apart."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memos.type.v1 import memory_pb2
from services.common.sealing import Erased, SubjectKeys, subject_key_id
from services.vault import records
from services.vault.records import RECORD_FIELDS, Role


def _keys_with(key_id: str) -> SubjectKeys:
    keys = SubjectKeys(js=None)  # type: ignore[arg-type]
    keys._keys[key_id] = AESGCM.generate_key(bit_length=256)  # as the mirror would hold it
    return keys


def _memory() -> memory_pb2.Memory:
    memory = memory_pb2.Memory(
        cube_id="c",
        memory_id="m1",
        text="Joanna: A mix of drama and romance!",
        index_context="Nate: What genre is your screenplay? Joanna: A mix of drama and romance!",
    )
    memory.usage.access_count = 3
    return memory


def test_a_whole_payload_opens_to_the_memory_with_its_context_and_without_its_usage():
    memory = _memory()
    keys = _keys_with(subject_key_id("c", ""))
    fields = records.payload(memory, Role.HEAD, keys)
    assert memory.text not in str(fields) and memory.index_context not in str(fields)  # sealed
    opened = records.memory_of(fields, keys)
    assert opened.index_context == memory.index_context
    assert opened.text == memory.text
    assert not opened.HasField("usage")


def test_a_search_reads_the_record_without_the_context():
    keys = _keys_with(subject_key_id("c", ""))
    fields = records.payload(_memory(), Role.HEAD, keys)
    searched = {name: fields[name] for name in RECORD_FIELDS}
    opened = records.memory_of(searched, keys)
    assert opened.text.startswith("Joanna:") and not opened.index_context


def test_a_context_does_not_open_as_a_record():
    keys = _keys_with(subject_key_id("c", ""))
    fields = records.payload(_memory(), Role.HEAD, keys)
    swapped = {**fields, "record": fields["context"]}
    with pytest.raises(Erased):
        records.memory_of(swapped, keys)


def test_a_destroyed_key_opens_neither():
    key_id = subject_key_id("c", "")
    keys = _keys_with(key_id)
    fields = records.payload(_memory(), Role.HEAD, keys)
    del keys._keys[key_id]
    with pytest.raises(Erased):
        records.memory_of(fields, keys)


@pytest.mark.parametrize(
    ("role", "state", "kind", "searched"),
    [
        (Role.HEAD, memory_pb2.MEMORY_STATE_GENERATED, memory_pb2.MEMORY_KIND_PLAINTEXT, True),
        (Role.HEAD, memory_pb2.MEMORY_STATE_ACTIVATED, memory_pb2.MEMORY_KIND_UNSPECIFIED, True),
        (Role.HEAD, memory_pb2.MEMORY_STATE_ARCHIVED, memory_pb2.MEMORY_KIND_PLAINTEXT, False),
        (Role.HEAD, memory_pb2.MEMORY_STATE_GENERATED, memory_pb2.MEMORY_KIND_ACTIVATION, False),
        (Role.VERSION, memory_pb2.MEMORY_STATE_GENERATED, memory_pb2.MEMORY_KIND_PLAINTEXT, False),
    ],
)
def test_only_a_live_plaintext_head_is_marked_for_plain_searches_of_its_cube(role, state, kind, searched):
    memory = _memory()
    memory.state, memory.kind = state, kind
    fields = records.payload(memory, role, _keys_with(subject_key_id("c", "")))
    assert fields.get(records.LIVE_IN) == ("c" if searched else None)
    archived = records.with_live_in({**fields, "state": "MEMORY_STATE_ARCHIVED"})
    assert records.LIVE_IN not in archived
