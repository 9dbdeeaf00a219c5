import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from memos.governance.v1 import governance_pb2
from memos_sdk.auth import TokenSource
from memos_sdk.errors import MemosAPIError
from services.common import validation
from services.common.auth import Caller, OutgoingToken, current_caller
from services.common.clients import forward_errors
from services.common.errors import ERROR_DOMAIN, InvalidArgument, MemosError, NotFound, Unavailable, to_status
from services.common.pagination import PageTokens


def test_errors_become_statuses_with_error_info():
    status = to_status(NotFound("memory x does not exist", reason="MEMORY_NOT_FOUND", name="x"))
    assert status.code == grpc.StatusCode.NOT_FOUND
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    decoded = rpc_status.status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    decoded.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "MEMORY_NOT_FOUND",
        ERROR_DOMAIN,
        {"name": "x"},
    )


async def test_a_peer_call_whose_token_failed_is_a_service_error_with_its_code():
    # The token is fetched inside the call's interceptor: its failure is not an AioRpcError.
    down = MemosAPIError(grpc.StatusCode.UNAVAILABLE, "failed to connect", "", {})
    with pytest.raises(Unavailable) as unavailable:
        async with forward_errors("vault"):
            raise down
    assert unavailable.value.reason == "VAULT_UNAVAILABLE"
    refused = MemosAPIError(grpc.StatusCode.UNAUTHENTICATED, "unknown key", "INVALID_API_KEY", {})
    with pytest.raises(MemosError) as forwarded:
        async with forward_errors("vault"):
            raise refused
    assert (forwarded.value.code, forwarded.value.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )


async def test_a_relayed_call_goes_unmarked_when_the_service_has_no_token_of_its_own():
    # Governance is unreachable: the caller's call still goes out, without the relay header, and
    # the service does not try again on every call.
    unreachable = TokenSource("127.0.0.1:9", "memos_k_secret", timeout_seconds=2)
    outgoing = OutgoingToken(unreachable)
    caller = Caller("principals/u", governance_pb2.PRINCIPAL_KIND_USER, False, "users-token")
    serving = current_caller.set(caller)
    try:
        assert await outgoing() == "users-token"
        assert await outgoing.relay() is None
        outgoing._own = _Refusing()
        assert await outgoing.relay() is None
    finally:
        current_caller.reset(serving)
        await unreachable.close()


class _Refusing:
    async def token(self) -> str:
        raise AssertionError("asked for a token again within the retry interval")

    async def close(self) -> None:
        pass


def test_page_tokens_round_trip_and_refuse_other_queries():
    tokens = PageTokens("secret")
    token = tokens.encode(b"query-a", "offset-1")
    assert tokens.decode(token, b"query-a") == "offset-1"
    assert tokens.decode("", b"query-a") is None
    with pytest.raises(InvalidArgument) as other:
        tokens.decode(token, b"query-b")
    assert other.value.reason == "PAGE_TOKEN_MISMATCH"
    with pytest.raises(InvalidArgument) as garbage:
        tokens.decode("not-a-token!", b"query-a")
    assert garbage.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument):
        PageTokens("other-secret").decode(token, b"query-a")


@pytest.mark.parametrize("cube", ["demo", "conv-26", "A_b-9"])
def test_valid_cube_ids(cube):
    assert validation.cube_id(cube) == cube


@pytest.mark.parametrize("cube", ["", "a.b", "a b", "*", ">", "-lead", "x" * 65])
def test_malformed_cube_ids(cube):
    with pytest.raises(InvalidArgument):
        validation.cube_id(cube)


def test_memory_names():
    assert validation.memory_name("cubes/demo/memories/" + "a" * 32) == ("demo", "a" * 32)
    for bad in ["", "cubes/demo", "cubes/demo/memories/xyz", "cubes/a.b/memories/" + "a" * 32]:
        with pytest.raises(InvalidArgument):
            validation.memory_name(bad)


async def test_keyed_locks_serialise_a_key_and_forget_it_when_free():
    import asyncio

    from services.scheduler.activation import KeyedLocks

    locks, order = KeyedLocks(), []

    async def work(key: str, tag: str) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(work("a", "1"), work("a", "2"), work("b", "3"))
    assert order.index("1-") < order.index("2+")  # same key: one at a time
    assert order.index("3+") < order.index("1-")  # other key: no waiting
    assert len(locks) == 0
