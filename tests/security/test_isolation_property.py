"""Property: whatever the principals, grants and requests, no RPC reads or writes a cube outside
the caller's grants, and none refuses a caller its grants allow.

Hypothesis draws grants (none, reader, writer) for three principals on three cubes and a run of
requests across every RPC of reader, vault, scheduler, lifecycle and governance; each request's
outcome is compared with what the grants allow: PERMISSION_DENIED exactly when they do not, and
everything a read returns belongs to the cube asked for.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memos.governance.v1 import governance_pb2
from memos.reader.v1 import reader_pb2
from memos.type.v1 import memory_pb2
from memos.vault.v1 import vault_pb2
from memos_sdk import MemosAPIError, MemosClient
from tests.conftest import in_process_mesh

pytestmark = [pytest.mark.integration, pytest.mark.security]

READER, WRITER, OWNER = (
    governance_pb2.CUBE_ROLE_READER,
    governance_pb2.CUBE_ROLE_WRITER,
    governance_pb2.CUBE_ROLE_OWNER,
)
PRINCIPALS = ("p0", "p1", "p2")
CUBES = ("c0", "c1", "c2")
OWNERS = {"c0": "admin", "c1": "admin", "c2": "p0"}
MISSING = "f" * 32


class LoopThread:
    """An event loop in a thread: Hypothesis drives a sync test, the mesh lives in the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable, limit_seconds: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(limit_seconds)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass(frozen=True)
class Op:
    name: str
    role: int
    call: Callable[[MemosClient, str, dict[str, str]], Awaitable[object]]


async def _raw(call):
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise MemosAPIError.from_rpc_error(err) from None


def _names(result) -> list[str]:
    """Names of the memories a read returned, wherever they are in the response."""
    if isinstance(result, memory_pb2.Memory):
        return [result.name]
    if isinstance(result, list):
        return [m.name for m in result if isinstance(m, memory_pb2.Memory)]
    for field in ("memories", "results", "versions"):
        items = getattr(result, field, None)
        if items is not None:
            return [getattr(i, "memory", i).name for i in items]
    return []


async def _chat(client: MemosClient, cube: str, seeds: dict[str, str]) -> None:
    async for _ in client.chat(cube, [("user", "what is the code?")], max_new_tokens=1):
        pass


OPS = (
    # reads
    Op("search", READER, lambda c, cube, s: c.search(cube, "what is the code?")),
    Op("chat", READER, _chat),
    Op("get", READER, lambda c, cube, s: c.get(s[cube])),
    Op("list", READER, lambda c, cube, s: c.list_page(cube)),
    Op("versions", READER, lambda c, cube, s: c.versions(s[cube])),
    Op(
        "batch_get",
        READER,
        lambda c, cube, s: _raw(
            c.vault.BatchGetMemories(vault_pb2.BatchGetMemoriesRequest(cube_id=cube, names=[s[cube]]))
        ),
    ),
    Op(
        "query",
        READER,
        lambda c, cube, s: _raw(
            c.vault.Query(vault_pb2.QueryRequest(cube_id=cube, similar_to=s[cube], limit=5))
        ),
    ),
    Op("get_policy", READER, lambda c, cube, s: c.get_policy(cube)),
    Op("get_operation", READER, lambda c, cube, s: c.get_operation(f"cubes/{cube}/operations/{MISSING}")),
    # writes
    Op(
        "add",
        WRITER,
        lambda c, cube, s: c.add_messages(cube, [{"speaker": "x", "text": f"note {uuid.uuid4().hex}"}]),
    ),
    Op(
        "document",
        WRITER,
        lambda c, cube, s: _raw(
            c.reader.AddDocument(reader_pb2.AddDocumentRequest(cube_id=cube, text="a short document"))
        ),
    ),
    Op("update", WRITER, lambda c, cube, s: c.update(s[cube], tags=["touched"])),
    Op("delete", WRITER, lambda c, cube, s: c.delete(f"cubes/{cube}/memories/{MISSING}")),
    Op(
        "transition",
        WRITER,
        lambda c, cube, s: c.transition(f"cubes/{cube}/memories/{MISSING}", memory_pb2.MEMORY_STATE_ARCHIVED),
    ),
    Op("rollback", WRITER, lambda c, cube, s: c.rollback(f"cubes/{cube}/memories/{MISSING}", 1)),
    Op("promote", WRITER, lambda c, cube, s: c.promote(cube, names=[f"cubes/{cube}/memories/{MISSING}"])),
    Op("preload", WRITER, lambda c, cube, s: c.preload(cube)),
    # the owner's
    Op("set_policy", OWNER, lambda c, cube, s: c.set_policy(cube)),
    Op("share", OWNER, lambda c, cube, s: c.share(cube, "principals/bystander", READER)),
    Op("list_access", OWNER, lambda c, cube, s: c.access(cube)),
    Op("audit", OWNER, lambda c, cube, s: c.audit(cube_id=cube, page_size=5).__anext__()),
)


def _held(principal: str, cube: str, grants: dict[tuple[str, str], int]) -> int:
    return OWNER if OWNERS[cube] == principal else grants.get((principal, cube), 0)


@pytest.mark.timeout(1200)
def test_no_rpc_reads_or_writes_outside_the_grants(nats, triton_addr, tmp_path):
    loop = LoopThread()
    mesh_cm = in_process_mesh(nats, triton_addr, tmp_path, lifecycle={})
    mesh = loop.run(mesh_cm.__aenter__())
    try:
        _check_isolation(loop, mesh)
    finally:
        loop.run(mesh_cm.__aexit__(None, None, None))
        loop.close()


def _check_isolation(loop: LoopThread, mesh) -> None:
    admin = mesh.client

    async def prepare():
        keys = {p: (await admin.create_principal(p)).api_key for p in PRINCIPALS}
        await admin.create_principal("bystander")
        clients = {p: mesh.client_as(k) for p, k in keys.items()}
        seeds = {}
        for cube, owner in OWNERS.items():
            writer = admin if owner == "admin" else clients[owner]
            reply = await writer.add_messages(
                cube, [{"speaker": "x", "text": f"The code of {cube} is {cube}-4711."}], wait_applied=True
            )
            seeds[cube] = reply.memory_names[0]
        return clients, seeds

    clients, seeds = loop.run(prepare())
    hosts = [
        h for h in (mesh.vault, mesh.reader, mesh.scheduler, mesh.lifecycle, mesh.governance) if h is not None
    ]
    tried = {"allowed": 0, "denied": 0}

    async def apply(grants: dict[tuple[str, str], int]) -> None:
        for principal in PRINCIPALS:
            for cube in CUBES:
                if OWNERS[cube] != principal:
                    await admin.share(cube, f"principals/{principal}", grants.get((principal, cube), 0))
        # Every service's mirror of the ACL has caught up before the requests go out.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(
                _role_in(host.guard.acl.get(cube), f"principals/{p}") == grants.get((p, cube), 0)
                for host in hosts
                for p in PRINCIPALS
                for cube in CUBES
                if OWNERS[cube] != p
            ):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("ACL changes did not reach every service within 5 s")

    async def attempt(op: Op, principal: str, cube: str):
        try:
            return True, await op.call(clients[principal], cube, seeds)
        except MemosAPIError as err:
            assert err.code != grpc.StatusCode.UNAUTHENTICATED, err
            return err.code != grpc.StatusCode.PERMISSION_DENIED, err

    grant = st.sampled_from([0, READER, WRITER])
    pairs = [(p, c) for p in PRINCIPALS for c in CUBES if OWNERS[c] != p]

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        grants=st.fixed_dictionaries({pair: grant for pair in pairs}),
        requests=st.lists(
            st.tuples(st.sampled_from(OPS), st.sampled_from(PRINCIPALS), st.sampled_from(CUBES)),
            min_size=1,
            max_size=10,
        ),
    )
    def check(grants, requests):
        loop.run(apply(grants))
        for op, principal, cube in requests:
            allowed, outcome = loop.run(attempt(op, principal, cube))
            expected = _held(principal, cube, grants) >= op.role
            assert allowed == expected, (op.name, principal, cube, grants, outcome)
            tried["allowed" if allowed else "denied"] += 1
            if allowed:
                foreign = [n for n in _names(outcome) if not n.startswith(f"cubes/{cube}/")]
                assert not foreign, (op.name, principal, cube, foreign)

    check()
    for client in clients.values():
        loop.run(client.close())
    print(
        f"isolation: {sum(tried.values())} requests ({tried['allowed']} allowed, {tried['denied']} denied), 0 leaks"
    )
    assert tried["allowed"] and tried["denied"]


def _role_in(acl, principal: str) -> int:
    if acl is None:
        return 0
    return max((g.role for g in acl.grants if g.principal == principal), default=0)
