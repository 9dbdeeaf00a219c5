"""memos: the command line of the MemOS mesh. `memos COMMAND --help` tells more."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

from google.protobuf import json_format

from memos.lifecycle.v1 import lifecycle_pb2
from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import memory_pb2

from .bundles import count_turns, ingest_bundle, read_bundles
from .cli_governance import add_commands as add_governance_commands
from .client import MemosClient
from .endpoints import Endpoints
from .errors import MemosAPIError


def _json(message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)


KINDS = {
    name.removeprefix("MEMORY_KIND_").lower(): value
    for name, value in memory_pb2.MemoryKind.items()
    if value != memory_pb2.MEMORY_KIND_UNSPECIFIED
}
STATES = {
    name.removeprefix("MEMORY_STATE_").lower(): value
    for name, value in memory_pb2.MemoryState.items()
    if value != memory_pb2.MEMORY_STATE_UNSPECIFIED
}


PII_KINDS = {
    name.removeprefix("PII_KIND_").lower(): value
    for name, value in lifecycle_pb2.PiiKind.items()
    if value != lifecycle_pb2.PII_KIND_UNSPECIFIED
}


def _pii_kinds(value: str) -> list[int]:
    names = [v.strip().lower() for v in value.split(",") if v.strip() and v.strip().lower() != "none"]
    unknown = [n for n in names if n not in PII_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kinds {unknown}; choose from {sorted(PII_KINDS)}")
    return [PII_KINDS[n] for n in names]


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _state(value: int) -> str:
    return memory_pb2.MemoryState.Name(value).removeprefix("MEMORY_STATE_").lower()


def _line(memory) -> str:
    sources = ",".join(s.turn_id for s in memory.provenance.sources)
    line = f"{memory.name}  v{memory.version}  {_state(memory.state)}  [{sources}]\n    {memory.text}"
    change = memory.state_change
    if memory.HasField("state_change"):
        why = f"{change.rule}" + (f" {change.score:.3g}" if change.score else "")
        related = f" -> {change.related_name}" if change.related_name else ""
        line += f"\n    ({_state(change.from_state)} -> {_state(change.to_state)} by {why}{related}: {change.reason})"
    if memory.HasField("adapter"):
        a = memory.adapter
        line += (
            f"\n    (adapter {a.blob_key}, {a.size_bytes} bytes, {len(memory.lineage.parent_names)} sources, "
            f"held-out recall {a.heldout_recall:.2f}, perplexity {a.ppl_before:.2f} -> {a.ppl_after:.2f} at scale {a.scale:.2f}"
            + (", stale" if a.stale else "")
            + ")"
        )
    return line


def _duration(text: str) -> dt.timedelta:
    """ "90s", "15m", "12h", "30d" or a number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text[-1:] in units:
            return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return dt.timedelta(seconds=float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h or 30d") from None


def _utc_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2023-05-30T10:18") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


async def cmd_add(client: MemosClient, args: argparse.Namespace) -> int:
    if args.file:
        from tqdm import tqdm

        bundles = list(read_bundles(Path(args.file)))
        total = sum(count_turns(b) for b in bundles)
        started = time.monotonic()
        with tqdm(total=total, unit="turn", desc=f"adding to {args.cube}", disable=args.quiet) as bar:
            for bundle in bundles:
                await ingest_bundle(client, args.cube, bundle, wait_applied=args.wait, on_session=bar.update)
        elapsed = time.monotonic() - started
        print(
            f"added {total} turns from {len(bundles)} conversation(s) in {elapsed:.1f}s ({total / elapsed:.0f} turns/s)"
        )
        return 0
    if not args.text:
        print("error: give TEXT or --file", file=sys.stderr)
        return 2
    message = {"speaker": args.speaker, "text": " ".join(args.text), "time_text": args.time, "id": args.id}
    reply = await client.add_messages(args.cube, [message], wait_applied=args.wait)
    for name in reply.memory_names:
        print(name)
    return 0


async def cmd_search(client: MemosClient, args: argparse.Namespace) -> int:
    reply = await client.search(
        args.cube,
        " ".join(args.query),
        top_k=args.top_k,
        token_budget=args.budget,
        reference_time=args.asked_at,
    )
    if args.json:
        print(_json(reply))
        return 0
    for i, result in enumerate(reply.results, 1):
        names = ", ".join(m.name for m in result.span) or result.memory.name
        sources = ",".join(s.turn_id for m in result.span for s in m.provenance.sources)
        print(f"{i:>2}. {result.score:.4f}  {names}  [{sources}]\n    {result.text}")
    print(f"{len(reply.results)} result(s), {reply.total_tokens} tokens")
    return 0


async def cmd_get(client: MemosClient, args: argparse.Namespace) -> int:
    print(_json(await client.get(args.name)))
    return 0


async def cmd_list(client: MemosClient, args: argparse.Namespace) -> int:
    shown = 0
    states = [STATES[s] for s in args.state]
    kinds = [KINDS[k] for k in args.kind]
    async for memory in client.iter_memories(
        args.cube, speaker=args.speaker, states=states, kinds=kinds, derived_from=args.derived_from
    ):
        print(json.dumps(json_format.MessageToDict(memory)) if args.json else _line(memory))
        shown += 1
        if args.limit and shown >= args.limit:
            break
    if not args.json:
        print(f"{shown} memor{'y' if shown == 1 else 'ies'}")
    return 0


def _print_report(report) -> None:
    activation = scheduler_pb2.ActivationOutcome.Name(report.activation).removeprefix("ACTIVATION_OUTCOME_")
    print(
        f"  [activation {activation.lower()}, kv {report.kv_status or 'none'}; "
        f"{report.prompt_tokens} prompt tokens ({report.cached_tokens} from KV cache), "
        f"{report.completion_tokens} generated, {report.finish_reason}]"
    )
    for use in report.memories:
        placement = scheduler_pb2.Placement.Name(use.placement).removeprefix("PLACEMENT_").lower()
        print(
            f"  - {placement:<9} {use.name} v{use.version}"
            + (f"  score {use.score:.3f}" if use.score else "")
        )


async def cmd_chat(client: MemosClient, args: argparse.Namespace) -> int:
    mode = {
        "auto": scheduler_pb2.ACTIVATION_MODE_UNSPECIFIED,
        "off": scheduler_pb2.ACTIVATION_MODE_OFF,
        "rebuild": scheduler_pb2.ACTIVATION_MODE_REBUILD_STALE,
    }[args.activation]
    history: list[tuple[str, str]] = []
    one_shot = bool(args.message)
    if not one_shot:
        print(f"chatting with cube {args.cube}; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        if one_shot:
            text = " ".join(args.message)
        else:
            try:
                text = (await asyncio.to_thread(input, "you> ")).strip()
            except EOFError:
                text = ""
            if not text:
                return 0
        history.append(("user", text))
        reply = []
        print("memos> ", end="", flush=True)
        async for response in client.chat(
            args.cube,
            history,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            activation_mode=mode,
            adapter_only=args.adapter_only,
        ):
            if response.text_delta:
                reply.append(response.text_delta)
                print(response.text_delta, end="", flush=True)
            if response.HasField("report"):
                print()
                if not args.quiet:
                    _print_report(response.report)
        history.append(("assistant", "".join(reply)))
        history = history[-args.history :]
        if one_shot:
            return 0


async def cmd_promote(client: MemosClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    reply = await client.promote(args.cube, names=args.name)
    print(f"{reply.operation}: distilling {reply.source_count} memories of {args.cube} into an adapter")
    if args.no_wait:
        return 0
    with tqdm(
        total=100, unit="%", desc="queued", disable=args.quiet, bar_format="{desc} {bar} {n:.0f}%"
    ) as bar:

        def show(operation) -> None:
            bar.set_description_str(operation.message[:60] or "queued")
            bar.n = round(operation.progress * 100)
            bar.refresh()

        operation = await client.wait_operation(reply.operation, on_update=show)
    if operation.state != lifecycle_pb2.OPERATION_STATE_SUCCEEDED:
        print(f"error: {operation.message}", file=sys.stderr)
        return 1
    print(operation.message)
    return 0


async def cmd_operation(client: MemosClient, args: argparse.Namespace) -> int:
    print(_json(await client.get_operation(args.name)))
    return 0


async def cmd_preload(client: MemosClient, args: argparse.Namespace) -> int:
    reply = await client.preload(args.cube, " ".join(args.hint))
    a = reply.activation
    print(
        f"{'built' if reply.created else 'already built'}: {a.kv_ref}\n"
        f"  {len(a.memories)} memories, {a.prefix_tokens} tokens, {a.blob_bytes} bytes"
    )
    return 0


async def cmd_delete(client: MemosClient, args: argparse.Namespace) -> int:
    reply = await client.delete(args.name)
    print(f"deleted {reply.name} (was version {reply.version})")
    return 0


async def cmd_update(client: MemosClient, args: argparse.Namespace) -> int:
    memory = await client.update(args.name, text=args.text, expected_version=args.expected_version)
    print(_line(memory))
    return 0


async def cmd_versions(client: MemosClient, args: argparse.Namespace) -> int:
    for memory in await client.versions(args.name):
        print(_line(memory))
    return 0


async def cmd_transition(client: MemosClient, args: argparse.Namespace) -> int:
    memory = await client.transition(
        args.name,
        STATES[args.state],
        reason=args.reason,
        related_name=args.related,
        expected_version=args.expected_version,
    )
    print(_line(memory))
    return 0


async def cmd_rollback(client: MemosClient, args: argparse.Namespace) -> int:
    print(_line(await client.rollback(args.name, args.version)))
    return 0


async def cmd_policy(client: MemosClient, args: argparse.Namespace) -> int:
    changes = (
        args.ttl,
        args.half_life,
        args.archive_below,
        args.promote_at,
        args.distill_at,
        args.conflicts,
        args.redact,
        args.redact_names,
    )
    if any(c is not None for c in changes):
        current = await client.get_policy(args.cube)

        def keep(field: str) -> dt.timedelta | None:
            return getattr(current, field).ToTimedelta() if current.HasField(field) else None

        policy = await client.set_policy(
            args.cube,
            ttl=args.ttl if args.ttl is not None else keep("ttl"),
            decay_half_life=args.half_life if args.half_life is not None else keep("decay_half_life"),
            archive_threshold=args.archive_below
            if args.archive_below is not None
            else current.archive_threshold,
            promote_access_count=args.promote_at
            if args.promote_at is not None
            else current.promote_access_count,
            distill_activated_count=args.distill_at
            if args.distill_at is not None
            else current.distill_activated_count,
            resolve_conflicts=(args.conflicts == "on") if args.conflicts else current.resolve_conflicts,
            redact=current.redaction.kinds if args.redact is None else args.redact,
            redact_names=current.redaction.names if args.redact_names is None else args.redact_names,
        )
    else:
        policy = await client.get_policy(args.cube)
    print(_json(policy))
    return 0


async def cmd_watch(client: MemosClient, args: argparse.Namespace) -> int:
    print(
        f"watching memory events of {'every cube' if args.cube == '*' else args.cube} (Ctrl-C stops)",
        file=sys.stderr,
    )
    async for event in client.watch(args.cube):
        if args.json:
            payload = json_format.MessageToDict(event.payload, preserving_proto_field_name=True)
            print(
                json.dumps(
                    {
                        "id": event.id,
                        "type": event.type,
                        "subject": event.subject,
                        "time": event.time,
                        "data": payload,
                    }
                ),
                flush=True,
            )
        else:
            memory = getattr(event.payload, "memory", None)
            text = f"  {memory.text[:100]}" if memory is not None and memory.text else ""
            print(f"{event.time}  {event.type:<24} {event.subject}{text}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memos",
        description="Store and find memories in a MemOS mesh. Start one with `make run`.",
        epilog="Endpoints: MEMOS_PORT_BASE (local mesh, default 50050) or MEMOS_READER_ADDR, "
        "MEMOS_VAULT_ADDR, MEMOS_SCHEDULER_ADDR, MEMOS_LIFECYCLE_ADDR, MEMOS_GOVERNANCE_ADDR, MEMOS_NATS_URL. "
        "Identity: MEMOS_API_KEY, else the key `make run` saved in ~/.config/memos/credentials.json "
        "(MEMOS_CREDENTIALS_FILE).",
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request (default 120)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("add", help="add a message, or a JSON/JSONL file of conversations")
    p.add_argument("--cube", required=True, help="the cube (memory owner) to write to")
    p.add_argument("text", nargs="*", metavar="TEXT", help="the message text")
    p.add_argument("--speaker", default="user", help="who said it (default: user)")
    p.add_argument("--time", default="", help='when it was said, e.g. "2023-05-08 13:56" (default: unset)')
    p.add_argument("--id", default="", help="turn id, unique in the cube (default: generated)")
    p.add_argument(
        "--file",
        help="conversations as bench/FORMAT.md bundles (.jsonl or .json), or a JSON list of messages",
    )
    p.add_argument("--wait", action="store_true", help="return only after the vault applied the writes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_add)

    p = sub.add_parser("search", help="find the memories that matter for a query")
    p.add_argument("--cube", required=True)
    p.add_argument("query", nargs="+", metavar="QUERY")
    p.add_argument("--top-k", type=int, default=10, help="at most this many items (default 10, max 50)")
    p.add_argument("--budget", type=int, default=0, help="token budget of the results (default: none)")
    p.add_argument(
        "--asked-at",
        type=_utc_time,
        metavar="TIME",
        help='when the question is asked, e.g. 2023-05-30T10:18 (default: now); "last week" is read against it',
    )
    p.add_argument("--json", action="store_true", help="print the raw response as JSON")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("get", help="show one memory with its whole header")
    p.add_argument("name", help="cubes/{cube}/memories/{id}")
    p.set_defaults(run=cmd_get)

    p = sub.add_parser("list", help="list the memories of a cube")
    p.add_argument("--cube", required=True)
    p.add_argument("--speaker", default="", help="only memories of this speaker")
    p.add_argument(
        "--derived-from",
        default="",
        metavar="NAME",
        help="only memories derived from this one (digests, merge survivors, adapters)",
    )
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=sorted(STATES),
        help="only memories in this state (repeatable; default: the live ones, generated and activated)",
    )
    p.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=sorted(KINDS),
        help="only memories of this kind (repeatable; default: plaintext; parametric lists adapters)",
    )
    p.add_argument("--limit", type=int, default=0, help="stop after this many (default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("update", help="change the text of a memory (the old version is kept)")
    p.add_argument("name")
    p.add_argument("--text", required=True)
    p.add_argument("--expected-version", type=int, default=0, help="fail if the memory has moved on")
    p.set_defaults(run=cmd_update)

    p = sub.add_parser("versions", help="list every version of a memory, newest first")
    p.add_argument("name")
    p.set_defaults(run=cmd_versions)

    p = sub.add_parser("delete", help="delete a memory and its versions")
    p.add_argument("name")
    p.set_defaults(run=cmd_delete)

    p = sub.add_parser(
        "transition",
        help="move a memory to another life-cycle state",
        description="Legal moves: generated/activated -> activated, archived, expired, deleted, merged, "
        "superseded; archived, expired, merged, superseded -> activated (restore) or deleted. "
        "The memory keeps every version.",
    )
    p.add_argument("name")
    p.add_argument("state", choices=sorted(s for s in STATES if s != "generated"))
    p.add_argument("--reason", default="", help="why (kept in the version's state change)")
    p.add_argument("--related", default="", help="for merged/superseded: the memory it went to")
    p.add_argument("--expected-version", type=int, default=0, help="fail if the memory has moved on")
    p.set_defaults(run=cmd_transition)

    p = sub.add_parser("rollback", help="make an earlier version's content current again (as a new version)")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(run=cmd_rollback)

    p = sub.add_parser(
        "policy",
        help="show or change a cube's life-cycle policy (TTL, decay, promotion, conflicts)",
        description="With no option, prints the policy; options change only what they name.",
    )
    p.add_argument("--cube", required=True)
    p.add_argument("--ttl", type=_duration, help="memories expire this long after creation (90s, 12h, 30d)")
    p.add_argument("--half-life", type=_duration, help="half-life of the usage-based importance")
    p.add_argument("--archive-below", type=float, help="archive memories whose importance falls below this")
    p.add_argument("--promote-at", type=int, help="activate memories used this many times (0: never)")
    p.add_argument(
        "--distill-at",
        type=int,
        help="distil the activated memories into a LoRA adapter once this many are activated (0: never)",
    )
    p.add_argument("--conflicts", choices=("on", "off"), help="merge restatements, supersede contradictions")
    p.add_argument(
        "--redact",
        type=_pii_kinds,
        metavar="KINDS",
        help="mask before storing: comma-separated email, phone, card, address (none: stop masking)",
    )
    p.add_argument(
        "--redact-names",
        type=_names,
        metavar="NAMES",
        help="comma-separated names masked as [NAME] ('' for none)",
    )
    p.set_defaults(run=cmd_policy)

    p = sub.add_parser("chat", help="talk with a model that remembers the cube (interactive)")
    p.add_argument("--cube", required=True)
    p.add_argument(
        "message", nargs="*", metavar="MESSAGE", help="one message, then exit (default: interactive)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=0, help="reply length limit (default: the service's)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default)")
    p.add_argument(
        "--activation",
        choices=("auto", "off", "rebuild"),
        default="auto",
        help="use the cube's KV cache: when fresh (auto), never (off), or rebuild it when stale",
    )
    p.add_argument("--history", type=int, default=8, help="messages of the conversation kept (default 8)")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="answer from the cube's adapter (parametric memory) alone: no memories as text or KV",
    )
    p.add_argument("--quiet", action="store_true", help="do not print which memories were used")
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("promote", help="distil a cube's memories into a LoRA adapter (parametric memory)")
    p.add_argument("--cube", required=True)
    p.add_argument("--to", choices=("parametric",), default="parametric", help="the kind to promote to")
    p.add_argument(
        "--name", action="append", default=[], help="only this memory (repeatable; default: all live)"
    )
    p.add_argument("--no-wait", action="store_true", help="print the operation and return")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_promote)

    p = sub.add_parser("operation", help="show a long-running operation (a distillation)")
    p.add_argument("name", help="cubes/{cube}/operations/{id}")
    p.set_defaults(run=cmd_operation)

    p = sub.add_parser("preload", help="build the cube's activation memory (KV cache) now")
    p.add_argument("--cube", required=True)
    p.add_argument("hint", nargs="*", metavar="HINT", help="what the next turn is about (next-scene hint)")
    p.set_defaults(run=cmd_preload)

    add_governance_commands(sub)

    p = sub.add_parser("watch", help="print memory-change events as they happen")
    p.add_argument("--cube", default="*", help="one cube (default: every cube)")
    p.add_argument("--json", action="store_true", help="one JSON object an event")
    p.set_defaults(run=cmd_watch)
    return parser


async def _run(args: argparse.Namespace) -> int:
    async with MemosClient(Endpoints.from_env(), timeout_seconds=args.timeout) as client:
        return await args.run(client, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except MemosAPIError as err:
        print(f"error: {err}", file=sys.stderr)
        if err.code.name == "UNAVAILABLE":
            print("hint: is the mesh running? start it with `make run`", file=sys.stderr)
        if err.code.name == "UNAUTHENTICATED":
            print(
                "hint: set MEMOS_API_KEY, or start the mesh with `make run` (it saves the admin's key)",
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
