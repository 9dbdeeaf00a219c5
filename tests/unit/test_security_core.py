"""Tokens, API keys, access decisions, rate limits and the audit chain, without servers."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from memos.governance.v1 import governance_pb2
from memos.lifecycle.v1 import lifecycle_pb2
from memos.reader.v1 import reader_pb2
from memos.scheduler.v1 import scheduler_pb2
from memos.vault.v1 import vault_pb2
from memos_sdk.audit import GENESIS, record_hash, verify_chain
from services.common import access
from services.common.auth import (
    Caller,
    TokenSigner,
    hash_secret,
    new_api_key,
    secret_matches,
    split_api_key,
)
from services.common.errors import InvalidArgument, Unauthenticated
from services.common.grpc_host import Registration
from services.governance import server as governance
from services.lifecycle import server as lifecycle
from services.reader import server as reader
from services.scheduler import server as scheduler
from services.vault import server as vault

pytestmark = pytest.mark.security

USER = governance_pb2.PRINCIPAL_KIND_USER


def _principal(name: str = "principals/alice", *, admin: bool = False, kind: int = USER):
    return governance_pb2.Principal(name=name, kind=kind, admin=admin)


def test_a_token_verifies_with_the_public_key_and_names_its_principal():
    signer = TokenSigner(Ed25519PrivateKey.generate(), ttl_seconds=60)
    token, expires = signer.issue(_principal(admin=True))
    caller = signer.verifier.verify(f"Bearer {token}")
    assert (caller.principal, caller.admin, caller.is_service) == ("principals/alice", True, False)
    assert time.time() < expires <= time.time() + 61


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "TOKEN_MISSING"),
        ("", "TOKEN_MISSING"),
        ("Basic abc", "TOKEN_MALFORMED"),
        ("Bearer x.y.z", "TOKEN_INVALID"),
    ],
)
def test_missing_or_malformed_tokens_are_unauthenticated(header, reason):
    verifier = TokenSigner(Ed25519PrivateKey.generate(), 60).verifier
    with pytest.raises(Unauthenticated) as err:
        verifier.verify(header)
    assert err.value.reason == reason


def test_forged_expired_and_altered_tokens_are_rejected():
    signer = TokenSigner(Ed25519PrivateKey.generate(), 60)
    forger = TokenSigner(Ed25519PrivateKey.generate(), 60)
    forged, _ = forger.issue(_principal(admin=True))
    with pytest.raises(Unauthenticated) as err:
        signer.verifier.verify(f"Bearer {forged}")
    assert err.value.reason == "TOKEN_INVALID"

    expired = TokenSigner(signer._key, ttl_seconds=-60).issue(_principal())[0]
    with pytest.raises(Unauthenticated) as err:
        signer.verifier.verify(f"Bearer {expired}")
    assert err.value.reason == "TOKEN_EXPIRED"

    # Raise the privilege in the payload and keep the signature: the signature no longer matches.
    header, payload, signature = signer.issue(_principal())[0].split(".")
    claims = jwt.decode(f"{header}.{payload}.{signature}", options={"verify_signature": False})
    claims["adm"] = True
    altered_payload = jwt.encode(claims, "k" * 32, algorithm="HS256").split(".")[1]
    with pytest.raises(Unauthenticated):
        signer.verifier.verify(f"Bearer {header}.{altered_payload}.{signature}")

    # The "none" algorithm is never accepted.
    unsigned = jwt.encode({"sub": "principals/x", "adm": True}, None, algorithm="none")
    with pytest.raises(Unauthenticated):
        signer.verifier.verify(f"Bearer {unsigned}")


def test_a_token_verified_before_is_refused_once_it_expires(monkeypatch):
    signer = TokenSigner(Ed25519PrivateKey.generate(), ttl_seconds=60)
    token, expires = signer.issue(_principal())
    verifier = signer.verifier
    assert verifier.verify(f"Bearer {token}").principal == "principals/alice"
    assert verifier.verify(f"Bearer {token}").principal == "principals/alice"  # remembered
    later = expires + 10  # past the 5 s leeway
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthenticated) as err:
        verifier.verify(f"Bearer {token}")
    assert err.value.reason == "TOKEN_EXPIRED"


def test_api_keys_are_checked_against_a_hash_of_their_secret():
    kid, key = new_api_key()
    got_kid, secret = split_api_key(key)
    assert got_kid == kid and secret not in hash_secret(secret)
    assert secret_matches(secret, hash_secret(secret))
    assert not secret_matches(secret + "x", hash_secret(secret))
    for bad in ("", "memos_short_x", "other_" + key[6:], key.replace("memos_", "memos-")):
        with pytest.raises(InvalidArgument):
            split_api_key(bad)


def _caller(principal="principals/bob", *, admin=False, kind=USER):
    return Caller(principal, kind, admin, "t")


def test_roles_decide_access_and_admins_and_services_hold_every_role():
    acl = governance_pb2.CubeAcl(cube_id="c", owner="principals/alice")
    acl.grants.add(cube_id="c", principal="principals/bob", role=access.READER)
    assert access.decide(_caller("principals/alice"), acl, access.OWNER) == (True, "OWNER")
    assert access.decide(_caller(), acl, access.READER) == (True, "READER")
    assert access.decide(_caller(), acl, access.WRITER) == (False, "ROLE_TOO_LOW")
    assert access.decide(_caller("principals/carol"), acl, access.READER) == (False, "NO_GRANT")
    assert access.decide(_caller(), None, access.READER) == (False, "NO_GRANT")
    assert access.decide(_caller(admin=True), None, access.OWNER) == (True, "ADMIN")
    service = _caller("principals/mesh", kind=governance_pb2.PRINCIPAL_KIND_SERVICE)
    assert access.decide(service, None, access.WRITER) == (True, "SERVICE")


def test_every_rpc_of_every_service_has_an_access_rule():
    tables = {
        "VaultService": (vault_pb2, vault.ACCESS),
        "ReaderService": (reader_pb2, reader.ACCESS),
        "SchedulerService": (scheduler_pb2, scheduler.ACCESS),
        "LifecycleService": (lifecycle_pb2, lifecycle.ACCESS),
        "GovernanceService": (governance_pb2, governance.ACCESS),
    }
    for service, (module, table) in tables.items():
        methods = {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}
        assert methods == set(table), service
        # Only IssueToken is open: it is how a caller gets a token.
        public = {name for name, rule in table.items() if rule.public}
        assert public == ({"IssueToken"} if service == "GovernanceService" else set())
    with pytest.raises(ValueError, match="no access rule for"):
        Registration.of(vault_pb2.DESCRIPTOR, "VaultService", lambda s, srv: None, object(), {})


def test_rules_take_the_cube_from_the_request_and_validate_it():
    rule = vault.ACCESS["GetMemory"]
    name = "cubes/team-a/memories/" + "0" * 32
    assert rule.cube(vault_pb2.GetMemoryRequest(name=name)) == "team-a"
    with pytest.raises(InvalidArgument):
        rule.cube(vault_pb2.GetMemoryRequest(name="cubes/../memories/x"))
    update = vault.ACCESS["UpdateMemory"]
    assert update.role == access.WRITER
    assert update.cube(vault_pb2.UpdateMemoryRequest(memory={"name": name})) == "team-a"
    op = lifecycle.ACCESS["GetOperation"]
    assert op.cube(lifecycle_pb2.GetOperationRequest(name="cubes/x/operations/" + "a" * 32)) == "x"


def test_the_rate_limiter_allows_a_burst_then_the_rate():
    limiter = access.RateLimiter(rate=1000.0, burst=5)
    assert all(limiter.allow("p") for _ in range(5))
    assert not limiter.allow("p")
    assert limiter.allow("q")  # per principal
    time.sleep(0.01)
    assert limiter.allow("p")  # refilled at the rate


def _chain(n: int) -> list[governance_pb2.AuditRecord]:
    records, prev = [], GENESIS
    for i in range(1, n + 1):
        record = governance_pb2.AuditRecord(
            sequence=i,
            principal=f"principals/p{i % 3}",
            action="/x/Y",
            cube_id="c",
            allowed=i % 2 == 0,
            prev_hash=prev,
        )
        records.append(record)
        prev = record_hash(record)
    return records


def test_the_audit_chain_verifies_and_shows_a_changed_removed_or_inserted_record():
    records = _chain(6)
    report = verify_chain(records)
    assert report.intact and report.records == 6 and report.head_hash == record_hash(records[-1]).hex()

    changed = _chain(6)
    changed[2].allowed = not changed[2].allowed  # flip one decision
    report = verify_chain(changed)
    assert not report.intact and report.broken_at == 4  # record 4 no longer follows record 3

    removed = _chain(6)
    del removed[3]
    report = verify_chain(removed)
    assert not report.intact and report.broken_at == 4 and "missing" in report.problem

    inserted = _chain(6)
    forged = governance_pb2.AuditRecord(sequence=4, principal="principals/mallory", prev_hash=GENESIS)
    inserted.insert(3, forged)
    assert not verify_chain(inserted).intact
