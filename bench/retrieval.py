"""Retrieval benchmark through the mesh's gRPC API (bench/FORMAT.md).

Starts a mesh when none answers, ingests each bundle into its own fresh cube, asks every
question, writes one line per question to --out, reports ingest throughput, and scores the
output when --gold is given.

    python -m bench.retrieval --bundles data.jsonl --out out.jsonl [--gold data.gold.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from google.protobuf import timestamp_pb2
from tqdm import tqdm

from bench.score import format_table, read_jsonl, score, turn_sessions_of
from memos.type.v1 import memory_pb2
from memos_sdk import Endpoints, MemosClient
from memos_sdk.bundles import count_turns, ingest_bundle, read_bundles, session_messages
from memos_sdk.endpoints import DEFAULT_PORT_BASE, SERVICES, LocalPorts
from services.common.embedder import Embedder
from services.common.settings import EmbedderSettings
from services.common.timeparse import parse_time
from services.launcher.mesh import Mesh, health_status
from services.reader.extract import Turn, embedded, turn_items
from services.reader.settings import ReaderSettings


@contextlib.contextmanager
def mesh_for(base: int, run_dir: Path | None):
    """Use the mesh at ``base`` if it answers (with the API key found as the SDK finds it);
    otherwise start one for the run. Yields the API key to use (None: the SDK's default)."""
    ports = LocalPorts(base)
    if health_status(ports.addr("scheduler")) == 1 and health_status(ports.addr("reader")) == 1:
        print(f"using the running mesh at port base {base}", file=sys.stderr)
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="memos-bench-") as tmp:
        # Retrieval is measured alone: no KV builds competing for the cores. One client asking
        # question after question may outrun the default per-principal rate limit (50/s).
        env = {"MEMOS_SCHEDULER_AUTO_PRELOAD": "false"}
        env |= {f"MEMOS_{name.upper()}_RATE_LIMIT_PER_SECOND": "1000" for name in SERVICES}
        mesh = Mesh(run_dir or Path(tmp), ports, extra_env=env)
        print(f"no mesh at port base {base}: starting one in {mesh.run_dir} ...", file=sys.stderr)
        with mesh:
            yield mesh.admin_key


class StealMeter:
    """The share of CPU time the hypervisor gave to other machines (``steal`` in /proc/stat) over
    the stretches between start and stop: on a shared VM, timings mean little without it."""

    def __init__(self) -> None:
        self._steal = self._total = 0
        self._at: tuple[int, int] | None = None

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])

    def start(self) -> None:
        self._at = self._read()

    def stop(self) -> None:
        now = self._read()
        if self._at is not None and now is not None:
            self._steal += now[0] - self._at[0]
            self._total += now[1] - self._at[1]

    def share(self) -> float | None:
        return round(self._steal / self._total, 3) if self._total else None


def cube_for(bundle_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", str(bundle_id))[:40].strip("-") or "bundle"
    return f"bench-{safe}-{uuid.uuid4().hex[:6]}"


def embedded_texts(bundle: dict, settings: ReaderSettings) -> list[list[str]]:
    """Per session, the texts the reader embeds for it (context keys are derived, not embedded)."""
    batches = []
    for session in bundle.get("sessions", []):
        turns = []
        for m in session_messages(session):
            try:
                when = parse_time(m["time_text"])
            except ValueError:
                when = None
            turns.append(Turn(m["id"], m["speaker"], m["text"], m["session_id"], when, m["image_caption"]))
        items = turn_items(
            "bench",
            turns,
            piece_tokens=settings.piece_tokens,
            context_tokens=settings.context_tokens,
            statement_piece_tokens=settings.statement_piece_tokens,
            digest_tokens=settings.digest_tokens,
            request_id=str(session.get("id", "")),
            principal="bench",
            now=timestamp_pb2.Timestamp(),
            numbered_from={},  # numbers change no text
        )
        batches.append([i.text for i in embedded(items)])
    return batches


async def embed_only_seconds(bundle: dict, port_base: int) -> tuple[float, int]:
    """The embedding model alone on the texts the mesh embeds for a bundle, in the same
    per-session calls: (seconds, texts)."""
    texts = embedded_texts(bundle, ReaderSettings())
    ports = LocalPorts(port_base)
    settings = EmbedderSettings(inference_addr=f"{ports.host}:{ports.triton_grpc}")
    embedder = Embedder(settings)
    try:
        started = time.perf_counter()
        for batch in texts:
            await embedder.embed(batch)
        return time.perf_counter() - started, sum(len(b) for b in texts)
    finally:
        await embedder.close()


def spread_sample(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all when ``n`` is 0 or covers them): data sets
    are often grouped by category, so the first ``n`` would not be a fair sample."""
    if n <= 0 or n >= len(items):
        return items
    return [items[i * len(items) // n] for i in range(n)]


class IngestedCubes:
    """Which cube holds each bundle already ingested into a kept mesh (``--run-dir``), and how
    many memories it stored, saved after each bundle: a later run on the same state searches
    them again without ingesting, and an interrupted run goes on where it stopped."""

    def __init__(self, run_dir: Path | None) -> None:
        self._path = run_dir / "bench-cubes.json" if run_dir else None
        exists = self._path is not None and self._path.exists()
        self._cubes: dict[str, dict] = json.loads(self._path.read_text()) if exists else {}

    def get(self, bundle_id: str) -> tuple[str, int] | None:
        entry = self._cubes.get(bundle_id)
        return (entry["cube"], entry["memories"]) if entry else None

    def record(self, bundle_id: str, cube: str, memories: int) -> None:
        if self._path is not None:
            self._cubes[bundle_id] = {"cube": cube, "memories": memories}
            self._path.write_text(json.dumps(self._cubes, indent=1))


async def stored_memories(client: MemosClient, cube: str) -> int:
    """The memories of a cube in any state."""
    every = [s for s in memory_pb2.MemoryState.values() if s]
    return (await client.list_page(cube, page_size=1, states=every)).total_size


async def wait_stored(client: MemosClient, cube: str, memories: int, timeout_seconds: float = 1800) -> None:
    """Wait until a reused cube holds its memories again: a vault whose index layout changed
    rebuilds it from the write log while it already answers."""
    deadline = time.monotonic() + timeout_seconds
    while (stored := await stored_memories(client, cube)) < memories:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{cube} holds {stored} of its {memories} memories after {timeout_seconds:.0f}s"
            )
        await asyncio.sleep(2)


def asked_at(question: dict) -> dt.datetime | None:
    """The question's date (``question_date``), when it has one that parses."""
    try:
        return parse_time(question["question_date"]) if question.get("question_date") else None
    except ValueError:
        return None


async def run(args: argparse.Namespace, api_key: str | None) -> tuple[dict, list[dict]]:
    bundles = spread_sample(list(read_bundles(args.bundles)), args.sample)
    total_turns = sum(count_turns(b) for b in bundles)
    total_questions = sum(len(b.get("questions", [])) for b in bundles)
    ingested = IngestedCubes(args.run_dir)
    ingest_seconds, ingested_turns = 0.0, 0
    embed_seconds, embedded = 0.0, 0
    lines = []
    steal = {phase: StealMeter() for phase in ("ingest", "search", "embed_only")}
    endpoints = Endpoints.local(args.port_base)
    async with MemosClient(endpoints, api_key=api_key, timeout_seconds=600) as client:
        with (
            tqdm(total=total_turns, unit="turn", desc="ingest", file=sys.stderr) as ingest_bar,
            tqdm(total=total_questions, unit="q", desc="search", file=sys.stderr) as search_bar,
        ):
            for bundle in bundles:
                known = ingested.get(bundle_id := str(bundle.get("id", "")))
                if known is None:
                    cube = cube_for(bundle_id)
                    started = time.perf_counter()
                    steal["ingest"].start()
                    await ingest_bundle(
                        client,
                        cube,
                        bundle,
                        wait_applied=True,
                        on_session=ingest_bar.update,
                        **(
                            {"max_batch": args.turns_per_call, "wait_each": True}
                            if args.turns_per_call
                            else {}
                        ),
                    )
                    ingest_seconds += time.perf_counter() - started
                    ingested_turns += count_turns(bundle)
                    steal["ingest"].stop()
                    ingested.record(bundle_id, cube, await stored_memories(client, cube))
                else:
                    cube, memories = known
                    await wait_stored(client, cube, memories)
                    ingest_bar.total -= count_turns(bundle)
                    ingest_bar.refresh()
                steal["search"].start()
                for question in bundle.get("questions", []):
                    started = time.perf_counter()
                    reply = await client.search(
                        cube,
                        question["question"],
                        top_k=args.top_k,
                        token_budget=args.budget,
                        reference_time=asked_at(question),
                    )
                    latency_ms = (time.perf_counter() - started) * 1000
                    items = [
                        {
                            "text": r.text,
                            "sources": list(
                                dict.fromkeys(s.turn_id for m in r.span for s in m.provenance.sources)
                            ),
                            "score": round(r.score, 6),
                        }
                        for r in reply.results
                    ]
                    lines.append(
                        {"question_id": question["id"], "items": items, "latency_ms": round(latency_ms, 3)}
                    )
                    search_bar.update()
                steal["search"].stop()
                if known is None and not args.no_embed_only:
                    # Bundle by bundle, next to its ingest, so that both see the host alike (the
                    # model alone timed after the whole run varied by a tenth between runs), and
                    # after its searches, when the mesh is idle and the model warm.
                    steal["embed_only"].start()
                    seconds, texts = await embed_only_seconds(bundle, args.port_base)
                    steal["embed_only"].stop()
                    embed_seconds, embedded = embed_seconds + seconds, embedded + texts
    args.out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = {
        "bundles": len(bundles),
        "turns": total_turns,
        "questions": len(lines),
        "ingested_turns": ingested_turns,
        "ingest_seconds": round(ingest_seconds, 2),
        "ingest_turns_per_second": round(ingested_turns / ingest_seconds, 1) if ingest_seconds else None,
        "embedded_texts": embedded,
        "embed_only_seconds": round(embed_seconds, 2) if embedded else None,
        "ingest_over_embed_only": round(ingest_seconds / embed_seconds, 3) if embed_seconds else None,
        "cpu_steal_share": {phase: meter.share() for phase, meter in steal.items()},
    }
    return report, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", required=True, type=Path, help="bundles (.jsonl), bench/FORMAT.md")
    parser.add_argument("--out", required=True, type=Path, help="where to write one line per question")
    parser.add_argument("--gold", type=Path, help="gold answers (.gold.jsonl): score the output")
    parser.add_argument(
        "--top-k", type=int, default=50, help="items per question (default 50, the format's maximum)"
    )
    parser.add_argument("--budget", type=int, default=0, help="token budget of each search (default: none)")
    parser.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="N",
        help="run only N bundles spread evenly over the file (default: all)",
    )
    parser.add_argument(
        "--turns-per-call",
        type=int,
        default=0,
        metavar="N",
        help="ingest N turns an AddMessages call, each call waiting for the vault, as a chat adds its "
        "turns (1: one at a time; default: a session a call)",
    )
    parser.add_argument(
        "--no-embed-only",
        action="store_true",
        help="skip timing the embedding model alone on the same texts (it takes about as long as ingest)",
    )
    parser.add_argument(
        "--port-base", type=int, default=DEFAULT_PORT_BASE, help="port base of the mesh to use or start"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="state directory of a mesh started for the run, kept (default: temporary); a later run "
        "with the same directory searches the bundles ingested there without ingesting them again",
    )
    args = parser.parse_args(argv)
    if args.turns_per_call < 0:
        parser.error("--turns-per-call must not be negative")

    # A TERM (a CI timeout, a kill) unwinds like Ctrl-C, so a mesh started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with mesh_for(args.port_base, args.run_dir) as api_key:
        report, outputs = asyncio.run(run(args, api_key))
    model_alone = (
        f"the model alone on the same {report['embedded_texts']} texts: {report['embed_only_seconds']}s "
        f"(ratio {report['ingest_over_embed_only']})"
        if report["embedded_texts"]
        else "the model alone was not timed (--no-embed-only, or bundles ingested by an earlier run)"
    )
    print(
        f"ingested {report['ingested_turns']} of {report['turns']} turns "
        f"({report['bundles']} bundle(s)) in {report['ingest_seconds']}s "
        f"({report['ingest_turns_per_second']} turns/s, through the mesh, applied); {model_alone}; "
        f"CPU steal share {report['cpu_steal_share']}; {report['questions']} questions -> {args.out}"
    )
    summary_path = args.out.with_name(args.out.name + ".summary.json")
    if args.gold:
        metrics = score(outputs, read_jsonl(args.gold), turn_sessions_of(args.bundles))
        print(format_table(metrics))
        report["metrics"] = metrics
    summary_path.write_text(json.dumps(report, indent=2))
    print(f"summary -> {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
