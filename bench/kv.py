"""Activation-memory benchmark: KV-cache injection versus plaintext prefill.

For memory prefixes of about 512, 1k, 2k and 4k model tokens (conversation turns from a bundle
file, rendered exactly as the scheduler renders a cube's activation memory), it measures on the
inference engine the service runs:

- time to first token and total time for ``--new-tokens`` greedy tokens, with the prefix as text
  (prefill) and as a KV cache read from the object store (decode + inject, no prefill); the KV
  time includes reading and decoding the blob, not just the hot in-memory copy;
- whether both give the same greedy tokens;
- blob bytes at float32 and at the stored encoding (float16), plus what bfloat16 and zlib give;
- the time to build a cache, and to load it from each object-store backend (a directory, and S3
  on a local SeaweedFS server).

    python -m bench.kv --bundles ../shared/data/locomo-dev.jsonl --out kv.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
from pydantic import SecretStr
from tqdm import tqdm

from memos.scheduler.v1 import scheduler_pb2
from memos.type.v1 import memory_pb2
from memos_sdk.bundles import read_bundles
from services.common.blobs import open_blob_store
from services.common.prompt import render_prefix, render_rest
from services.common.settings import BlobStoreSettings
from services.inference.kvcache import ActivationStore, HotCaches, StoredKv, encode
from services.inference.llm import Completion, LanguageModel, Sampling, materialize, packaged_model_path
from services.launcher.weed import start_s3

SIZES = (512, 1024, 2048, 4096)


def memories_from(bundles: Path) -> list[memory_pb2.Memory]:
    memories = []
    for bundle in read_bundles(bundles):
        for session in bundle["sessions"]:
            for turn in session["turns"]:
                text = f"[{session.get('date', '')}] {turn['speaker']}: {turn['text']}"
                memories.append(
                    memory_pb2.Memory(name=f"cubes/bench/memories/{len(memories):032x}", text=text)
                )
    return memories


def prefix_of(lm: LanguageModel, memories: list[memory_pb2.Memory], target: int) -> tuple[str, int]:
    """The longest rendered prefix of the first memories that stays within ``target`` tokens."""
    low, high = 1, len(memories)
    while low < high:
        mid = (low + high + 1) // 2
        if len(lm.tokenize(render_prefix(memories[:mid]))) <= target:
            low = mid
        else:
            high = mid - 1
    text = render_prefix(memories[:low])
    return text, len(lm.tokenize(text))


def timed_generation(lm, prefix_ids, prompt_ids, sampling, load=None) -> tuple[float, float, list[int]]:
    """(ms to first token, ms in all, token ids); ``load`` returns the KV cache (timed too)."""
    started = time.perf_counter()
    cache = load() if load else None
    done = Completion()
    first = None
    for _ in lm.generate(prefix_ids, prompt_ids, sampling, cache=cache, completion=done):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - started) * 1000, (end - started) * 1000, done.token_ids


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, required=True, help="conversations (bench/FORMAT.md bundles)")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON figures go")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="prefix sizes in model tokens"
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; medians (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = LanguageModel(materialize(packaged_model_path(), Path.home() / ".cache" / "memos" / "models"))
    memories = memories_from(args.bundles)
    question = "What did Caroline do at the LGBTQ support group, and when did she go?"
    prompt_ids = lm.tokenize(render_rest([], [scheduler_pb2.ChatMessage(role="user", content=question)]))
    sampling = Sampling(max_new_tokens=args.new_tokens)

    with tempfile.TemporaryDirectory(prefix="memos-bench-kv-") as tmp:
        s3 = start_s3(Path(tmp) / "s3")
        try:
            backends = {
                "directory": open_blob_store(BlobStoreSettings(blob_store_url=f"{tmp}/blobs")),
                "s3": open_blob_store(
                    BlobStoreSettings(
                        blob_store_url="s3://memos-bench/kv",
                        s3_endpoint=s3.endpoint,
                        s3_access_key=SecretStr(s3.access_key),
                        s3_secret_key=SecretStr(s3.secret_key),
                        s3_secure=False,
                    )
                ),
            }
            rows = run(lm, memories, prompt_ids, sampling, backends, args)
        finally:
            s3.stop()

    result = {
        "benchmark": "kv",
        "model": lm.model_id,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "stored_dtype": "float16",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows))
    print(f"\nwritten to {args.out}")
    return 0


def run(lm, memories, prompt_ids, sampling, backends, args) -> list[dict]:
    # Warm up the kernels so the first size is not charged for it.
    timed_generation(lm, lm.tokenize(render_prefix(memories[:5])), prompt_ids, Sampling(max_new_tokens=2))
    return [
        measure(lm, prefix_of(lm, memories, target)[0], prompt_ids, sampling, backends, args.repeats)
        for target in tqdm(args.sizes, desc="prefix sizes", unit="size", file=sys.stderr)
    ]


def measure(lm, prefix: str, prompt_ids, sampling, backends, repeats: int) -> dict:
    prefix_ids = lm.tokenize(prefix)
    store = ActivationStore(
        model_id=lm.model_id,
        blobs=backends["directory"],
        hot=HotCaches(0),  # nothing hot: every KV run reads the blob
        dtype=torch.float16,
        compute_dtype=torch.float32,
    )
    started = time.perf_counter()
    built = store.build("bench", prefix_ids, lm.prefill, [])
    build_ms = (time.perf_counter() - started) * 1000
    blob = backends["directory"].get(built.ref)
    backends["s3"].put(built.ref, blob)
    cache = StoredKv.decode(blob).to_cache(torch.float32)

    def load():
        return store.load("bench", built.ref, prefix_ids)[0]

    text_runs = [timed_generation(lm, prefix_ids, prompt_ids, sampling) for _ in range(repeats)]
    kv_runs = [timed_generation(lm, prefix_ids, prompt_ids, sampling, load) for _ in range(repeats)]
    ttft_text = statistics.median(r[0] for r in text_runs)
    ttft_kv = statistics.median(r[0] for r in kv_runs)
    load_ms = {
        name: timed(lambda blobs=blobs: StoredKv.decode(blobs.get(built.ref)), repeats)
        for name, blobs in backends.items()
    }
    return {
        "prefix_tokens": len(prefix_ids),
        "ttft_ms_text": round(ttft_text, 1),
        "ttft_ms_kv": round(ttft_kv, 1),
        "ttft_reduction": round(1 - ttft_kv / ttft_text, 4),
        "total_ms_text": round(statistics.median(r[1] for r in text_runs), 1),
        "total_ms_kv": round(statistics.median(r[1] for r in kv_runs), 1),
        "same_output": all(r[2] == text_runs[0][2] for r in text_runs + kv_runs),
        "generated_tokens": len(text_runs[0][2]),
        "blob_bytes_fp32": len(encode(cache, torch.float32, {})),
        "blob_bytes": len(blob),
        "blob_bytes_bf16": len(encode(cache, torch.bfloat16, {})),
        "blob_bytes_fp16_zlib": len(zlib.compress(blob, 1)),
        "build_ms": round(build_ms, 1),
        "load_ms_directory": round(load_ms["directory"], 1),
        "load_ms_s3": round(load_ms["s3"], 1),
    }


def format_table(rows: list[dict]) -> str:
    header = (
        "| prefix tokens | TTFT text ms | TTFT KV ms | TTFT cut | total text ms | total KV ms | same output "
        "| fp32 MB | fp16 MB | bf16 MB | fp16+zlib MB | build ms | load dir ms | load S3 ms |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def mb(n: int) -> str:
        return f"{n / 1e6:.1f}"

    for r in rows:
        lines.append(
            f"| {r['prefix_tokens']} | {r['ttft_ms_text']:.0f} | {r['ttft_ms_kv']:.0f} | {r['ttft_reduction']:.1%} "
            f"| {r['total_ms_text']:.0f} | {r['total_ms_kv']:.0f} | {'yes' if r['same_output'] else 'NO'} "
            f"| {mb(r['blob_bytes_fp32'])} | {mb(r['blob_bytes'])} | {mb(r['blob_bytes_bf16'])} "
            f"| {mb(r['blob_bytes_fp16_zlib'])} | {r['build_ms']:.0f} | {r['load_ms_directory']:.0f} | {r['load_ms_s3']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
