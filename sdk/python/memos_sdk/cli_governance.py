"""The governance commands of `memos`: principals, sharing, and the audit log."""

from __future__ import annotations

import argparse
import datetime as dt

from memos.governance.v1 import governance_pb2

from .audit import record_hash, verify_chain
from .client import MemosClient

KINDS = {
    "user": governance_pb2.PRINCIPAL_KIND_USER,
    "agent": governance_pb2.PRINCIPAL_KIND_AGENT,
    "service": governance_pb2.PRINCIPAL_KIND_SERVICE,
}
ROLES = {"reader": governance_pb2.CUBE_ROLE_READER, "writer": governance_pb2.CUBE_ROLE_WRITER}


def _principal(value: str) -> str:
    return value if value.startswith("principals/") else f"principals/{value}"


def _role(value: int) -> str:
    return governance_pb2.CubeRole.Name(value).removeprefix("CUBE_ROLE_").lower()


async def cmd_principal_create(client: MemosClient, args: argparse.Namespace) -> int:
    reply = await client.create_principal(
        args.id, kind=KINDS[args.kind], display_name=args.display_name, admin=args.admin
    )
    print(f"created {reply.principal.name}")
    print(f"API key (shown once; give it to its holder as MEMOS_API_KEY):\n{reply.api_key}")
    return 0


async def cmd_share(client: MemosClient, args: argparse.Namespace) -> int:
    access = await client.share(args.cube, _principal(args.principal), ROLES[args.role])
    print(f"{access.principal} is {_role(access.role)} of cube {access.cube_id}")
    return 0


async def cmd_revoke(client: MemosClient, args: argparse.Namespace) -> int:
    access = await client.revoke(args.cube, _principal(args.principal))
    print(f"{access.principal} has no access to cube {access.cube_id} any more")
    return 0


async def cmd_access(client: MemosClient, args: argparse.Namespace) -> int:
    for grant in await client.access(args.cube):
        print(f"{_role(grant.role):<7} {grant.principal}")
    return 0


def _when(record: governance_pb2.AuditRecord) -> str:
    return dt.datetime.fromtimestamp(record.time.seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def cmd_audit_list(client: MemosClient, args: argparse.Namespace) -> int:
    records = client.audit(
        cube_id=args.cube, principal=args.principal and _principal(args.principal), denied_only=args.denied
    )
    async for r in records:
        verdict = "allowed" if r.allowed else "DENIED "
        method = r.action.rsplit("/", 1)[-1]
        print(
            f"{r.sequence:>7} {_when(r)} {verdict} {r.principal or '-'} {method} {r.cube_id or '-'} "
            f"{r.resource} ({r.reason}, {r.service})"
        )
    return 0


async def cmd_audit_verify(client: MemosClient, args: argparse.Namespace) -> int:
    records = [r async for r in client.audit()]
    report = verify_chain(records)
    if not report.intact:
        print(f"BROKEN at record {report.broken_at}: {report.problem}")
        return 2
    print(f"intact: {report.records} records, head {report.head_sequence}:{report.head_hash}")
    if args.expect_head:
        sequence, _, digest = args.expect_head.partition(":")
        position = int(sequence) if sequence.isdigit() else 0
        if not (0 < position <= len(records) and record_hash(records[position - 1]).hex() == digest):
            print(f"BROKEN: the head noted earlier ({args.expect_head}) is not in the log any more")
            return 2
        print(f"the head noted earlier ({position}) is still in the chain")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("principal", help="create a principal (a user, agent or service) and its API key")
    p.add_argument("action", choices=("create",))
    p.add_argument("id", help="1-63 lower-case letters, digits, '-' or '_'")
    p.add_argument("--kind", choices=sorted(KINDS), default="user")
    p.add_argument("--display-name", default="")
    p.add_argument(
        "--admin", action="store_true", help="manages principals and holds every role on every cube"
    )
    p.set_defaults(run=cmd_principal_create)

    p = sub.add_parser("share", help="let a principal read (or write) a cube you own")
    p.add_argument("--cube", required=True)
    p.add_argument("--with", dest="principal", required=True, help="the principal (id or principals/id)")
    p.add_argument("--role", choices=sorted(ROLES), default="reader")
    p.set_defaults(run=cmd_share)

    p = sub.add_parser("revoke", help="take a principal's access to a cube away (effective within a second)")
    p.add_argument("--cube", required=True)
    p.add_argument("--from", dest="principal", required=True, help="the principal (id or principals/id)")
    p.set_defaults(run=cmd_revoke)

    p = sub.add_parser("access", help="who holds which role on a cube")
    p.add_argument("--cube", required=True)
    p.set_defaults(run=cmd_access)

    p = sub.add_parser("audit", help="read the audit log, or check its hash chain")
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = audit.add_parser("list", help="access decisions and changes, oldest first")
    q.add_argument("--cube", default="", help="one cube's (its owner may read them)")
    q.add_argument("--principal", default="", help="one principal's")
    q.add_argument("--denied", action="store_true", help="only refused requests")
    q.set_defaults(run=cmd_audit_list)
    q = audit.add_parser(
        "verify",
        help="recompute the hash chain over the whole log (admins); exit 2 if broken",
        description="Checks every record follows the one before it. Note the head it prints somewhere "
        "else: --expect-head then also catches records cut from the end.",
    )
    q.add_argument(
        "--expect-head", default="", metavar="SEQ:HASH", help="a head printed by an earlier verify"
    )
    q.set_defaults(run=cmd_audit_verify)
