"""Raw-turn baselines through the same harness: one item per turn, searched three ways.

Each bundle's turns ("[date] speaker: text", as the issue-2 mesh stored them) go into a fresh
Qdrant Edge shard with a dense MiniLM vector and a BM25 sparse vector; every question is then
answered by BM25 alone, dense alone, and their reciprocal-rank fusion (k = 60). The outputs are
scored by bench.score exactly like the mesh's, so the tables sit side by side.

    python -m bench.baselines --bundles data.jsonl --gold data.gold.jsonl [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

from qdrant_edge import (
    Bm25,
    Bm25Config,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    Fusion,
    Modifier,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    UpdateOperation,
)
from tqdm import tqdm

from bench.score import format_table, read_jsonl, score, turn_sessions_of
from memos_sdk.bundles import read_bundles
from services.common.onnx_embedding import OnnxEncoder, export
from services.common.settings import ModelFilesSettings
from services.common.timeparse import human_date, parse_time

METHODS = ("bm25", "dense", "rrf")
DEPTH = 200


def turn_items(bundle: dict) -> list[dict]:
    items = []
    for session in bundle["sessions"]:
        try:
            date = f"[{human_date(parse_time(session.get('date', '')))}] "
        except ValueError:
            date = ""
        for turn in session["turns"]:
            text = f"{turn['speaker']}: {turn['text']}" if turn.get("speaker") else turn["text"]
            if turn.get("image_caption"):
                text += f" [shared an image: {turn['image_caption']}]"
            items.append({"text": date + text, "sources": [turn["id"]]})
    return items


def run(bundles: list[dict], encoder: OnnxEncoder, top_k: int) -> dict[str, list[dict]]:
    bm25 = Bm25(Bm25Config(avg_len=32, language="english"))
    outputs: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tqdm(total=sum(len(b.get("questions", [])) for b in bundles), unit="q", file=sys.stderr) as bar:
        for bundle in bundles:
            items = turn_items(bundle)
            vectors = [
                v
                for i in range(0, len(items), 64)
                for v in encoder.encode([x["text"] for x in items[i : i + 64]])
            ]
            with tempfile.TemporaryDirectory(prefix="memos-baseline-") as tmp:
                shard = EdgeShard.create(
                    tmp,
                    EdgeConfig(
                        vectors={"dense": EdgeVectorParams(size=len(vectors[0]), distance=Distance.Cosine)},
                        sparse_vectors={"bm25": EdgeSparseVectorParams(modifier=Modifier.Idf)},
                    ),
                )
                shard.update(
                    UpdateOperation.upsert_points(
                        [
                            Point(
                                str(uuid.UUID(int=i)),
                                {"dense": v.tolist(), "bm25": bm25.embed_document(x["text"])},
                                {"i": i},
                            )
                            for i, (x, v) in enumerate(zip(items, vectors, strict=True))
                        ]
                    )
                )
                for question in bundle.get("questions", []):
                    text = question["question"]
                    dense = Query.Nearest(encoder.encode([text])[0].tolist(), using="dense")
                    sparse = Query.Nearest(bm25.embed_query(text), using="bm25")
                    requests = {
                        "bm25": QueryRequest(limit=top_k, query=sparse, with_payload=True),
                        "dense": QueryRequest(limit=top_k, query=dense, with_payload=True),
                        "rrf": QueryRequest(
                            limit=top_k,
                            prefetches=[
                                Prefetch(limit=DEPTH, query=dense),
                                Prefetch(limit=DEPTH, query=sparse),
                            ],
                            query=Fusion.Rrf(k=60),
                            with_payload=True,
                        ),
                    }
                    for method, request in requests.items():
                        hits = shard.query(request)
                        outputs[method].append(
                            {
                                "question_id": question["id"],
                                "items": [
                                    items[int(h.payload["i"])] | {"score": float(h.score)} for h in hits
                                ],
                                "latency_ms": 0.0,
                            }
                        )
                    bar.update()
                shard.close()
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", required=True, type=Path, help="bundles (.jsonl), bench/FORMAT.md")
    parser.add_argument("--gold", required=True, type=Path, help="gold answers (.gold.jsonl)")
    parser.add_argument("--out-dir", type=Path, help="write <method>.jsonl and summary.json here")
    parser.add_argument("--top-k", type=int, default=50)
    args = parser.parse_args(argv)

    settings = ModelFilesSettings()
    encoder = OnnxEncoder(export(settings.embedding_model_dir(), settings.model_cache_dir))
    outputs = run(list(read_bundles(args.bundles)), encoder, args.top_k)
    gold, sessions = read_jsonl(args.gold), turn_sessions_of(args.bundles)
    summary = {}
    for method, lines in outputs.items():
        summary[method] = score(lines, gold, sessions)
        print(f"\n== raw turns, {method}")
        print(format_table(summary[method]))
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            (args.out_dir / f"{method}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if args.out_dir:
        (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"\noutputs and summary -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
