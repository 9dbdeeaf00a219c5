"""Erasure through the real mesh: a marker string goes everywhere a subject's data goes (memories,
the KV cache, an adapter); EraseSubject removes it all, and a scan of every data directory finds
neither the marker nor the subject key nor a derived artifact."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import nats as nats_py
import pytest

from memos.events.v1 import events_pb2
from memos.governance.v1 import governance_pb2
from memos.lifecycle.v1 import lifecycle_pb2
from memos.type.v1 import memory_pb2
from memos_sdk import MemosAPIError
from memos_sdk.wire import EventKind, events_subject
from services.common.sealing import SubjectKeys
from tests.conftest import in_process_mesh

pytestmark = [pytest.mark.integration, pytest.mark.security]

TRAINER = {"epochs": 3, "replay_pool": 4, "eval_questions": 1, "torch_threads": 2}
ALL_STATES = [s for s in memory_pb2.MemoryState.values() if s]
ALL_KINDS = [k for k in memory_pb2.MemoryKind.values() if k]
WRITER = governance_pb2.CUBE_ROLE_WRITER


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path} ({needle[:12]!r})" for needle in needles if needle in data]
    return hits


def _blobs_of(root: Path, cube: str) -> list[str]:
    return [str(p) for p in root.rglob("*.safetensors") if f"/{cube}/" in str(p)]


async def _everything(client, cube: str) -> list[memory_pb2.Memory]:
    return [m async for m in client.iter_memories(cube, states=ALL_STATES, kinds=ALL_KINDS)]


async def _erase(client, subject: str) -> governance_pb2.EraseSubjectResponse:
    return await client.erase(subject)


@pytest.mark.timeout(1800)  # trains two adapters
async def test_erasing_a_principal_then_a_cube_leaves_nothing_behind(nats, inference, tmp_path):
    marker = f"Zq{uuid.uuid4().hex[:10]}"
    kept = f"Kp{uuid.uuid4().hex[:10]}"
    async with in_process_mesh(
        nats,
        inference.addr,
        tmp_path,
        lifecycle={"default_resolve_conflicts": False},
        trainer={**TRAINER, "blob_store_url": str(inference.blobs)},
        blobs=inference.blobs,
    ) as mesh:
        admin = mesh.client
        bob_key = (await admin.create_principal("bob")).api_key
        await admin.add_messages(
            "family", [{"speaker": "alice", "text": "My dog is called Rex."}], wait_applied=True
        )
        await admin.share("family", "principals/bob", WRITER)
        await asyncio.sleep(0.3)
        async with mesh.client_as(bob_key) as bob:
            await bob.add_messages(
                "family",
                [
                    {"speaker": "bob", "text": f"My cat is called {marker}."},
                    {"speaker": "bob", "text": f"I keep the spare key under the {marker} pot."},
                ],
                wait_applied=True,
            )
            await bob.add_messages(
                "bob-diary", [{"speaker": "bob", "text": f"{marker} day one."}], wait_applied=True
            )
        await admin.add_messages(
            "elsewhere", [{"speaker": "carol", "text": f"The code word is {kept}."}], wait_applied=True
        )

        # Everything derived: the KV cache and an adapter trained on the family's memories.
        await admin.preload("family")
        op = await admin.promote("family")
        done = await admin.wait_operation(op.operation, poll_seconds=0.5)
        assert done.state == lifecycle_pb2.OPERATION_STATE_SUCCEEDED, done.message
        assert _blobs_of(inference.blobs, "family")

        bus = await nats_py.connect(nats.url)
        erased_events: list[events_pb2.CubeErased] = []

        async def on_event(msg) -> None:
            erased_events.append(events_pb2.CubeErased.FromString(msg.data))

        await bus.subscribe(events_subject("*", EventKind.CUBE_ERASED), cb=on_event)
        keys = SubjectKeys(bus.jetstream())
        bob_keys = {k: await keys.key(k) for k in await keys.matching("*.bob")}
        assert set(bob_keys) == {"family.bob", "bob-diary.bob"}

        # Content is sealed at rest from the start: no plaintext on the bus or in the index.
        stores = [Path(nats.store), tmp_path / "vault"]
        assert not _files_containing(Path(nats.store), [marker.encode()])

        # 1. Erase what bob wrote: his memories in both cubes, and the adapter that learned them.
        report = await _erase(admin, "principals/bob")
        assert sorted(report.cubes) == ["bob-diary", "family"]
        assert report.memories_erased == 3 and report.adapters_withdrawn == 1
        assert report.keys_destroyed == 2 and report.kv_caches_deleted >= 1
        assert len(report.rebuild_operations) == 1  # alice's memory still feeds an adapter
        family = await _everything(admin, "family")
        assert all(marker not in m.text for m in family)
        assert [m.text.rsplit(": ", 1)[-1] for m in family if m.kind == memory_pb2.MEMORY_KIND_PLAINTEXT] == [
            "My dog is called Rex."
        ]
        assert await _everything(admin, "bob-diary") == []
        rebuilt = await admin.wait_operation(report.rebuild_operations[0], poll_seconds=0.5)
        assert rebuilt.state == lifecycle_pb2.OPERATION_STATE_SUCCEEDED, rebuilt.message
        adapters = [
            m for m in await _everything(admin, "family") if m.kind == memory_pb2.MEMORY_KIND_PARAMETRIC
        ]
        assert len(adapters) == 1 and len(adapters[0].lineage.parent_names) == 1  # alice's only

        # 2. Erase the whole cube.
        report = await _erase(admin, "cubes/family")
        assert report.cubes == ["family"] and report.adapters_withdrawn == 1
        assert await _everything(admin, "family") == []
        assert not _blobs_of(inference.blobs, "family") and not _blobs_of(inference.blobs, "bob-diary")
        # Other cubes are untouched.
        hits = await admin.search("elsewhere", "what is the code word?")
        assert any(kept in h.memory.text for h in hits.results)
        await asyncio.sleep(0.5)
        assert {e.cube_id for e in erased_events} == {"family", "bob-diary"}
        await bus.close()

    # The scan, with every process of the mesh stopped and its files flushed: neither the
    # marker nor bob's keys anywhere in the bus's store or the index.
    needles = [marker.encode(), *bob_keys.values()]
    for root in stores:
        assert not _files_containing(root, needles), root
    assert not _blobs_of(inference.blobs, "family")


async def test_erase_subject_checks_its_input(nats, triton_addr, tmp_path):
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        for subject, reason in (
            ("", "MISSING_FIELD"),
            ("users/x", "MALFORMED_SUBJECT"),
            ("cubes/a b", "MALFORMED_CUBE_ID"),
        ):
            with pytest.raises(MemosAPIError) as err:
                await _erase(mesh.client, subject)
            assert (err.value.code, err.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), subject
        nothing = await _erase(mesh.client, "cubes/never-used")
        assert (nothing.memories_erased, nothing.keys_destroyed) == (0, 0)
        key = (await mesh.client.create_principal("eve")).api_key
        async with mesh.client_as(key) as eve:
            with pytest.raises(MemosAPIError) as err:
                await _erase(eve, "cubes/never-used")
            assert (err.value.code, err.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_ADMIN")
