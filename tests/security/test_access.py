"""Tokens and per-cube access through the real mesh: a second principal is kept out of a cube
until it is shared, let in after, and kept out again within seconds of revocation."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from memos.governance.v1 import governance_pb2
from memos.vault.v1 import vault_pb2
from memos_sdk import MemosAPIError, MemosClient
from tests.conftest import in_process_mesh, mint_token

pytestmark = [pytest.mark.integration, pytest.mark.security]

READER, WRITER = governance_pb2.CUBE_ROLE_READER, governance_pb2.CUBE_ROLE_WRITER
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _fails(call, code: grpc.StatusCode, reason: str = "") -> MemosAPIError:
    with pytest.raises(MemosAPIError) as err:
        await call
    assert err.value.code == code, err.value
    if reason:
        assert err.value.reason == reason, err.value
    return err.value


async def _until_denied(call_factory, limit_seconds: float = 5.0) -> float:
    """Seconds until the call is refused."""
    started = time.monotonic()
    while True:
        try:
            await call_factory()
        except MemosAPIError as err:
            assert err.code == DENIED, err
            return time.monotonic() - started
        assert time.monotonic() - started < limit_seconds, "still allowed"
        await asyncio.sleep(0.05)


async def test_a_second_principal_gets_in_only_while_the_cube_is_shared(nats, triton_addr, tmp_path):
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        admin = mesh.client
        added = await admin.add_messages(
            "alice-notes", [{"speaker": "alice", "text": "My locker code is 4711."}], wait_applied=True
        )
        name = added.memory_names[0]
        assert [(g.principal, g.role) for g in await admin.access("alice-notes")] == [
            ("principals/admin", governance_pb2.CUBE_ROLE_OWNER)
        ]
        bob_key = (await admin.create_principal("bob", display_name="Bob")).api_key
        async with mesh.client_as(bob_key) as bob:
            # Not shared: no read, no write, by any door.
            await _fails(bob.search("alice-notes", "locker code"), DENIED, "NO_GRANT")
            await _fails(bob.get(name), DENIED, "NO_GRANT")
            await _fails(bob.list_page("alice-notes"), DENIED, "NO_GRANT")
            await _fails(bob.add_messages("alice-notes", [{"speaker": "bob", "text": "x"}]), DENIED)
            await _fails(bob.update(name, text="Bob was here"), DENIED)
            await _fails(bob.delete(name), DENIED)
            await _fails(bob.share("alice-notes", "principals/bob", WRITER), DENIED)
            await _fails(bob.create_principal("mallory"), DENIED, "NOT_ADMIN")
            assert not (await bob.check_access("alice-notes")).allowed

            # Read-only share: reads work, writes still refused.
            await admin.share("alice-notes", "principals/bob", READER)
            await asyncio.sleep(0.3)
            hits = await bob.search("alice-notes", "what is the locker code?")
            assert any("4711" in h.memory.text for h in hits.results)
            assert (await bob.get(name)).name == name
            await _fails(
                bob.add_messages("alice-notes", [{"speaker": "bob", "text": "x"}]), DENIED, "ROLE_TOO_LOW"
            )
            check = await bob.check_access("alice-notes", role=WRITER)
            assert (check.allowed, check.role) == (False, READER)

            # Read-write share: bob's writes carry his principal.
            await admin.share("alice-notes", "principals/bob", WRITER)
            await asyncio.sleep(0.3)
            written = await bob.add_messages(
                "alice-notes", [{"speaker": "bob", "text": "The gym opens at six."}], wait_applied=True
            )
            memory = await bob.get(written.memory_names[0])
            assert memory.provenance.principal == "principals/bob"

            # Revoked: refused again within seconds, everywhere.
            await admin.revoke("alice-notes", "principals/bob")
            seconds = await _until_denied(lambda: bob.search("alice-notes", "gym"))
            assert seconds < 5
            await _fails(bob.get(name), DENIED)

            # Bob's own cube: he owns it by writing first, and admin-made data stays out of it.
            await bob.add_messages("bob-notes", [{"speaker": "bob", "text": "Buy milk."}], wait_applied=True)
            owners = await bob.access("bob-notes")
            assert (owners[0].principal, owners[0].role) == ("principals/bob", governance_pb2.CUBE_ROLE_OWNER)
            listed = await bob.list_page("bob-notes")
            assert [m.text.rsplit(": ", 1)[-1] for m in listed.memories] == ["Buy milk."]


async def test_calls_without_a_valid_token_are_unauthenticated(nats, triton_addr, tmp_path):
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        await mesh.client.add_messages("c1", [{"speaker": "a", "text": "hello"}], wait_applied=True)
        cases = {
            "no token": (MemosClient(mesh.endpoints, token=None, api_key=None), "TOKEN_MISSING"),
            "forged": (MemosClient(mesh.endpoints, token=_forged_token()), "TOKEN_INVALID"),
            "expired": (MemosClient(mesh.endpoints, token=mint_token(mesh.keys, ttl=-60)), "TOKEN_EXPIRED"),
        }
        for what, (client, reason) in cases.items():
            async with client:
                client._tokens = None  # no saved key may stand in for the missing token
                for call in (
                    client.search("c1", "hello"),
                    client.list_page("c1"),
                    client.add_messages("c1", [{"speaker": "a", "text": "x"}]),
                    client.access("c1"),
                ):
                    err = await _fails(call, grpc.StatusCode.UNAUTHENTICATED)
                    assert err.reason == reason, what
        async with MemosClient(mesh.endpoints, api_key="memos_" + "0" * 16 + "_" + "x" * 43) as client:
            await _fails(client.search("c1", "hello"), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")


def _forged_token() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.common.auth import TokenSigner

    principal = governance_pb2.Principal(
        name="principals/admin", admin=True, kind=governance_pb2.PRINCIPAL_KIND_USER
    )
    return TokenSigner(Ed25519PrivateKey.generate(), 60).issue(principal)[0]


async def test_a_principal_over_its_rate_limit_gets_resource_exhausted(nats, triton_addr, tmp_path):
    async with in_process_mesh(
        nats, triton_addr, tmp_path, rate_limit_burst=5, rate_limit_per_second=0.001
    ) as mesh:
        await mesh.client.add_messages("c1", [{"speaker": "a", "text": "hello"}], wait_applied=True)
        errors = []
        for _ in range(10):
            try:
                await mesh.client.search("c1", "hello")
            except MemosAPIError as err:
                errors.append(err)
        assert errors and all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
        assert {e.reason for e in errors} == {"RATE_LIMITED"}
        assert len(errors) == 5  # the burst of 5 went through; refill is negligible


async def test_a_principal_that_already_exists_is_not_replaced_and_a_retry_gets_a_working_key(
    nats, triton_addr, tmp_path
):
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        request_id = uuid.uuid4().hex
        first = await mesh.client.create_principal("carol", request_id=request_id)
        retry = await mesh.client.create_principal("carol", request_id=request_id)
        assert retry.principal.name == "principals/carol" and retry.api_key != first.api_key
        await _fails(
            mesh.client.create_principal("carol"), grpc.StatusCode.ALREADY_EXISTS, "PRINCIPAL_EXISTS"
        )
        async with mesh.client_as(retry.api_key) as carol:
            await carol.add_messages("carol-cube", [{"speaker": "c", "text": "hi"}])
        async with mesh.client_as(first.api_key) as stale:
            await _fails(stale.list_page("carol-cube"), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
        await _fails(
            mesh.client.create_principal("Bad Name!"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_PRINCIPAL"
        )


async def test_the_vault_confines_every_query_to_the_callers_cube(nats, triton_addr, tmp_path):
    """A reader of one cube cannot reach another cube's memories through names or batch reads."""
    async with in_process_mesh(nats, triton_addr, tmp_path) as mesh:
        a = await mesh.client.add_messages(
            "cube-a", [{"speaker": "x", "text": "secret A"}], wait_applied=True
        )
        b = await mesh.client.add_messages(
            "cube-b", [{"speaker": "x", "text": "secret B"}], wait_applied=True
        )
        reader_key = (await mesh.client.create_principal("reader-a")).api_key
        await mesh.client.share("cube-a", "principals/reader-a", READER)
        await asyncio.sleep(0.3)
        async with mesh.client_as(reader_key) as client:
            request = vault_pb2.BatchGetMemoriesRequest(
                cube_id="cube-a", names=[a.memory_names[0], b.memory_names[0]], allow_missing=True
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.vault.BatchGetMemories(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # a name outside cube_id
            await _fails(client.get(b.memory_names[0]), DENIED)
            listed = await client.list_page("cube-a")
            assert {m.name for m in listed.memories} == set(a.memory_names)


async def test_a_cube_over_its_item_limit_refuses_more(nats, triton_addr, tmp_path):
    async with in_process_mesh(
        nats, triton_addr, tmp_path, reader_settings={"max_items_per_cube": 3}
    ) as mesh:
        await mesh.client.add_messages(
            "small", [{"speaker": "a", "text": f"fact {i}"} for i in range(2)], wait_applied=True
        )
        err = await _fails(
            mesh.client.add_messages("small", [{"speaker": "a", "text": f"more {i}"} for i in range(2)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CUBE_FULL",
        )
        assert err.metadata["limit"] == "3"
        await mesh.client.add_messages("small", [{"speaker": "a", "text": "one more"}], wait_applied=True)
        page = await mesh.client.list_page("small", page_size=1)
        assert page.total_size == 3 and len(page.memories) == 1
        await _fails(
            mesh.client.add_messages("small", [{"speaker": "a", "text": "too many"}]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "CUBE_FULL",
        )
