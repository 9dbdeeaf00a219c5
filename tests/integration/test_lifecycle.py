"""The lifecycle service on a real mesh: every state, events, TTL and rollback across a restart,
usage-driven promotion and decay, and conflict resolution."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path

import grpc
import nats as nats_client
import pytest

from memos.type.v1 import memory_pb2
from memos_sdk import MemosClient
from memos_sdk.errors import MemosAPIError
from memos_sdk.wire import events_subject
from services.common.grpc_host import ServiceHost
from services.common.operations import operation_id, operation_name
from services.lifecycle.rules import distillation_request_id
from services.lifecycle.server import setup as lifecycle_setup
from tests.conftest import in_process_mesh, lifecycle_settings, until

pytestmark = pytest.mark.integration

S = memory_pb2.MemoryState
# Sweeps often (cubes without a policy are never swept); no conflict resolution unless asked.
QUIET = {"sweep_interval_seconds": 0.3, "default_resolve_conflicts": False}


async def _add(
    client: MemosClient,
    cube: str,
    text: str,
    turn: str,
    day: int = 1,
    speaker: str = "Alice",
    session: str = "s1",
) -> str:
    reply = await client.add_messages(
        cube,
        [
            {
                "id": turn,
                "speaker": speaker,
                "text": text,
                "time_text": f"2023-05-{day:02d} 10:00",
                "session_id": session,
            }
        ],
        wait_applied=True,
    )
    return reply.memory_names[0]


async def _derived(client: MemosClient, cube: str, parent: str, state: int):
    page = await client.list_page(cube, derived_from=parent, states=[state])
    return page.memories[0] if page.memories else None


async def _state_is(client: MemosClient, name: str, state: int):
    memory = await client.get(name)
    return memory if memory.state == state else None


async def test_a_memory_moves_through_every_state(nats, triton_addr, tmp_path: Path, cube: str):
    async with in_process_mesh(nats, triton_addr, tmp_path, lifecycle=QUIET) as mesh:
        client = mesh.client
        a = await _add(client, cube, "Alice keeps her bicycle in the garden shed.", "t1")
        b = await _add(client, cube, "Alice bought a red kayak in spring.", "t2")
        c = await _add(client, cube, "Alice stores her bike in the shed.", "t3")
        nc = await nats_client.connect(nats.url)
        seen: list[tuple[str, str]] = []

        async def on_event(msg) -> None:
            seen.append((msg.subject.split(".", 4)[-1], msg.headers["ce-subject"]))

        sub = await nc.subscribe(events_subject(cube), cb=on_event)

        async def found(name: str, states=()) -> bool:
            reply = await client.search(cube, "where is the bicycle kept", states=states)
            return any(r.memory.name == name for r in reply.results)

        assert (await client.get(a)).state == S.MEMORY_STATE_GENERATED and await found(a)
        moves = [
            (S.MEMORY_STATE_ACTIVATED, "", True),
            (S.MEMORY_STATE_ARCHIVED, "", False),
            (S.MEMORY_STATE_ACTIVATED, "", True),  # restored
            (S.MEMORY_STATE_SUPERSEDED, b, False),
            (S.MEMORY_STATE_ACTIVATED, "", True),
            (S.MEMORY_STATE_MERGED, c, False),
            (S.MEMORY_STATE_ACTIVATED, "", True),
            (S.MEMORY_STATE_DELETED, "", False),
        ]
        for target, related, live in moves:
            memory = await client.transition(a, target, reason="test", related_name=related)
            assert memory.state == target and memory.state_change.to_state == target
            assert await found(a) is live
        assert memory.state_change.from_state == S.MEMORY_STATE_ACTIVATED
        assert await found(a, states=[S.MEMORY_STATE_DELETED])  # history stays searchable on request
        listed = [m.name async for m in client.iter_memories(cube, states=[S.MEMORY_STATE_DELETED])]
        assert listed == [a]

        with pytest.raises(MemosAPIError) as illegal:
            await client.transition(a, S.MEMORY_STATE_ACTIVATED)
        assert illegal.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert illegal.value.reason == "ILLEGAL_TRANSITION"
        with pytest.raises(MemosAPIError) as unlinked:
            await client.transition(b, S.MEMORY_STATE_MERGED)
        assert unlinked.value.code == grpc.StatusCode.INVALID_ARGUMENT

        versions = await client.versions(a)
        assert [v.version for v in versions] == list(range(len(moves) + 1, 0, -1))
        assert [v.state for v in versions] == [t for t, _, _ in reversed(moves)] + [S.MEMORY_STATE_GENERATED]
        superseded = next(v for v in versions if v.state == S.MEMORY_STATE_SUPERSEDED)
        assert superseded.lineage.superseded_by == b and superseded.state_change.related_name == b

        await client.set_policy(cube, ttl=dt.timedelta(seconds=1), resolve_conflicts=False)
        expired = await until(lambda: _state_is(client, b, S.MEMORY_STATE_EXPIRED), "b expired")
        assert expired.state_change.rule == "ttl"
        await client.transition(b, S.MEMORY_STATE_DELETED)

        await until(lambda: asyncio.sleep(0.1, result=len(seen) >= 11), "events arrived")
        kinds = {kind for kind, subject in seen if subject in (a, b)}
        assert kinds == {
            "memory.activated",
            "memory.archived",
            "memory.superseded",
            "memory.merged",
            "memory.deleted",
            "memory.expired",
        }
        await sub.unsubscribe()
        await nc.drain()


async def test_ttl_expiry_and_rollback_work_across_a_lifecycle_restart(
    nats, triton_addr, tmp_path: Path, cube: str
):
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        name = await _add(mesh.client, cube, "Alice's locker code is 4711.", "t1")
        await mesh.client.update(name, text="Alice's locker code is 9000.")
        settings = lifecycle_settings(
            nats.url, f"127.0.0.1:{mesh.vault.port}", mesh.keys, mesh.endpoints.governance, **QUIET
        )
        async with ServiceHost("lifecycle", settings, lifecycle_setup) as first:
            client = mesh.client_as(mesh.keys.admin_key, lifecycle=f"127.0.0.1:{first.port}")
            async with client:
                await client.set_policy(cube, ttl=dt.timedelta(seconds=4), resolve_conflicts=False)
        await asyncio.sleep(4.5)  # the TTL passes while no lifecycle runs
        assert (await mesh.client.get(name)).state == S.MEMORY_STATE_GENERATED

        async with ServiceHost("lifecycle", settings, lifecycle_setup) as second:
            client = mesh.client_as(mesh.keys.admin_key, lifecycle=f"127.0.0.1:{second.port}")
            async with client:
                assert (await client.get_policy(cube)).ttl.seconds == 4
                expired = await until(lambda: _state_is(client, name, S.MEMORY_STATE_EXPIRED), "expired")
                assert expired.state_change.rule == "ttl" and expired.version == 3
                rolled = await client.rollback(name, 1)
        assert rolled.text.endswith("Alice's locker code is 4711.") and rolled.version == 4
        assert rolled.state == S.MEMORY_STATE_EXPIRED  # a rollback restores content, not state
        texts = [v.text.rsplit(": ", 1)[-1] for v in await mesh.client.versions(name)]
        assert texts == [
            "Alice's locker code is 4711.",
            "Alice's locker code is 9000.",
            "Alice's locker code is 9000.",
            "Alice's locker code is 4711.",
        ]


async def test_searches_count_usage_which_promotes_and_decay_archives(
    nats, triton_addr, tmp_path: Path, cube: str
):
    async with in_process_mesh(nats, triton_addr, tmp_path, lifecycle=QUIET) as mesh:
        client = mesh.client
        # Two sessions: turns of one session said one after the other would be neighbours, and a
        # search would return (and count) both.
        used = await _add(client, cube, "Alice's favourite tea is jasmine green tea.", "t1", session="s1")
        unused = await _add(client, cube, "Alice repaired the garage door hinge.", "t2", session="s2")
        for _ in range(2):
            reply = await client.search(cube, "which tea does Alice like", top_k=1)
            assert reply.results[0].memory.name == used

        async def counted():
            memory = await client.get(used)
            return memory if memory.usage.access_count == 2 else None

        counted_memory = await until(counted, "usage counted")
        assert counted_memory.version == 1  # usage is no new version
        assert (await client.get(unused)).usage.access_count == 0

        await client.set_policy(
            cube, promote_access_count=2, distill_activated_count=1, resolve_conflicts=False
        )
        promoted = await until(lambda: _state_is(client, used, S.MEMORY_STATE_ACTIVATED), "promoted")
        assert promoted.state_change.rule == "promotion" and promoted.usage.access_count == 2
        assert (await client.get(unused)).state == S.MEMORY_STATE_GENERATED

        # One activated memory reaches the distillation rule: the sweep queues a job for it (no
        # trainer runs here, so it stays queued), and later sweeps queue nothing more.
        name = operation_name(cube, operation_id(cube, distillation_request_id([used])))

        async def queued():
            with contextlib.suppress(MemosAPIError):
                return await client.get_operation(name)
            return None

        operation = await until(queued, "distillation queued")
        assert operation.source_count == 1 and operation.message == "queued (policy)"

        await client.set_policy(
            cube, decay_half_life=dt.timedelta(seconds=2), archive_threshold=0.5, resolve_conflicts=False
        )
        archived = await until(lambda: _state_is(client, unused, S.MEMORY_STATE_ARCHIVED), "archived")
        assert archived.state_change.rule == "decay" and archived.state_change.score < 0.5


# Created events name each memory's neighbours; with none named (0) the lifecycle asks the vault.
@pytest.mark.parametrize("named_neighbours", [5, 0])
async def test_restatements_merge_and_contradictions_supersede(
    nats, triton_addr, tmp_path: Path, cube: str, named_neighbours: int
):
    async with in_process_mesh(
        nats,
        triton_addr,
        tmp_path,
        lifecycle={"sweep_interval_seconds": 3600.0},
        vault_settings={"created_neighbours": named_neighbours},
        reader_settings={"digest_tokens": 150},
    ) as mesh:
        client = mesh.client
        # Said in a conversation, the earlier memories are indexed under their context too, a
        # key that searches leave out and that the versions the lifecycle writes must keep.
        said = await client.add_messages(
            cube,
            [
                {
                    "id": t,
                    "speaker": who,
                    "text": text,
                    "time_text": f"2023-05-0{day} 10:00",
                    "session_id": "s0",
                }
                for t, who, text, day in [
                    ("t1", "Alice", "My favorite color is blue.", 1),
                    ("t1b", "Bob", "Good to know, thanks.", 1),
                    ("t2", "Alice", "I adopted a puppy named Max.", 2),
                ]
            ],
            wait_applied=True,
        )
        blue, _, puppy, digest = said.memory_names  # and Alice's digest of the session, last
        assert (await client.get(blue)).index_context and (await client.get(puppy)).index_context
        other = await _add(client, cube, "My favorite color is blue.", "t3", day=3, speaker="Bob")
        again = await _add(client, cube, "I adopted a puppy named Max.", "t4", day=4)
        green = await _add(client, cube, "My favorite color is green now.", "t5", day=9)

        merged = await until(lambda: _state_is(client, again, S.MEMORY_STATE_MERGED), "merged")
        assert merged.lineage.merged_into == puppy and merged.state_change.rule == "duplicate"
        survivor = await client.get(puppy)
        assert {s.turn_id for s in survivor.provenance.sources} == {"t2", "t4"}
        assert again in survivor.lineage.parent_names

        old = await until(lambda: _state_is(client, blue, S.MEMORY_STATE_SUPERSEDED), "superseded")
        assert old.lineage.superseded_by == green and old.state_change.rule == "contradiction"
        new = await client.get(green)
        assert new.lineage.supersedes == blue and new.state == S.MEMORY_STATE_GENERATED
        assert old.valid_to == new.valid_from == new.event_time
        assert (await client.get(other)).state == S.MEMORY_STATE_GENERATED  # another speaker's

        # Alice's digest of the first session restated "blue": it is withdrawn with it.
        withdrawn = await until(lambda: _derived(client, cube, blue, S.MEMORY_STATE_ARCHIVED), "withdrawn")
        assert withdrawn.name == digest and withdrawn.type == memory_pb2.MEMORY_TYPE_SUMMARY
        assert "puppy" in withdrawn.text and withdrawn.state_change.related_name == blue
        assert withdrawn.state_change.rule == "source_changed"

        reply = await client.search(cube, "favorite color")
        names = [r.memory.name for r in reply.results]
        assert green in names and blue not in names
        history = await client.search(cube, "favorite color", states=[S.MEMORY_STATE_SUPERSEDED])
        assert [r.memory.name for r in history.results] == [blue]
