"""Conflict resolution on real conversations with synthetic updates: how many restatements are
merged, how many updates supersede what they update, and how often a supersede or merge is wrong.

The set: every turn of the given conversations (real talk, where a rule firing is almost always
wrong), plus, for each speaker, facts on a few topics stated early, restated in the middle,
updated late, and a look-alike statement about someone else. The lifecycle's own judge
(services.lifecycle.conflicts.judge) decides, on the same MiniLM vectors and the same candidate
rule as the service (the 5 nearest live memories of the same speaker).

    python -m bench.conflicts --bundles ../shared/data/locomo-dev.jsonl [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memos.type.v1 import memory_pb2
from memos_sdk.bundles import read_bundles
from services.common.clock import to_timestamp
from services.common.onnx_embedding import OnnxEncoder, export
from services.common.settings import ModelFilesSettings
from services.common.timeparse import human_date, parse_time
from services.lifecycle.conflicts import content, judge
from services.lifecycle.settings import LifecycleSettings

# topic: (statement, restatement, update, look-alike about someone else); {v} old value, {w} new.
TOPICS = {
    "color": (
        "My favorite color is {v}.",
        "Like I said, my favorite color is {v}.",
        "My favorite color is {w} now.",
        "My brother's favorite color is {w}.",
    ),
    "city": (
        "I live in {v}.",
        "I live in {v}, as I mentioned.",
        "I no longer live in {v}, I moved to {w}.",
        "My parents live in {w}.",
    ),
    "job": (
        "I work as a {v}.",
        "I work as a {v}, as you know.",
        "I quit my job as a {v}, I work as a {w} now.",
        "My friend works as a {w}.",
    ),
    "pet": (
        "I have a dog named {v}.",
        "I have a dog named {v}, remember?",
        "I don't have a dog named {v} anymore, he went to live with my aunt.",
        "My neighbor has a dog named {w}.",
    ),
    "sport": (
        "I play {v} every weekend.",
        "I play {v} every weekend, like I told you.",
        "I stopped playing {v}, I play {w} every weekend now.",
        "My cousin plays {w} every weekend.",
    ),
    "drink": (
        "I drink {v} every morning.",
        "I drink {v} every morning, as always.",
        "I don't drink {v} anymore, I switched to {w}.",
        "My roommate drinks {w} every morning.",
    ),
    "car": (
        "I drive a {v}.",
        "I still drive a {v}.",
        "I sold my {v}, I drive a {w} now.",
        "My uncle drives a {w}.",
    ),
    # shares no words with its update: the rules are expected to miss it
    "diet": (
        "I love eating steak, it is my favourite food.",
        "Steak is still my favourite food.",
        "I am vegan now.",
        "My sister is vegan.",
    ),
}
VALUES = {
    "color": ["blue", "green", "red", "yellow", "purple", "orange"],
    "city": ["Boston", "Denver", "Seattle", "Austin", "Chicago", "Portland"],
    "job": ["nurse", "teacher", "carpenter", "lawyer", "chef", "pilot"],
    "pet": ["Max", "Rex", "Buddy", "Luna", "Charlie", "Rocky"],
    "sport": ["tennis", "golf", "basketball", "volleyball", "squash", "baseball"],
    "drink": ["coffee", "green tea", "orange juice", "espresso", "black tea"],
    "car": ["Honda Civic", "Ford Focus", "Toyota Corolla", "Subaru Outback", "Tesla Model 3"],
    "diet": ["steak"],
}


@dataclass
class Item:
    memory: memory_pb2.Memory
    role: str  # "real", "statement", "restatement", "update", "lookalike"
    fact: str = ""  # speaker/topic of a synthetic item
    state: str = "live"
    target: Item | None = None  # merged into, or superseded by


def build(bundle: dict, rng: random.Random, topics_per_speaker: int) -> list[Item]:
    turns = []
    for session in bundle["sessions"]:
        when = parse_time(session["date"]) if session.get("date") else None
        turns += [(when, t["speaker"], t["text"], "real", "") for t in session["turns"]]
    n = len(turns)
    for speaker in bundle.get("speakers", []):
        for topic in rng.sample(sorted(TOPICS), topics_per_speaker):
            v, w = rng.sample(VALUES[topic], 2) if len(VALUES[topic]) > 1 else (VALUES[topic][0],) * 2
            texts = [t.format(v=v, w=w) for t in TOPICS[topic]]
            # stated early, restated in the middle, updated late; the look-alike anywhere
            spots = [*(rng.randrange(k * n // 3, (k + 1) * n // 3) for k in range(3)), rng.randrange(n)]
            for text, role, spot in zip(
                texts, ("statement", "restatement", "update", "lookalike"), spots, strict=True
            ):
                turns.insert(
                    spot, (turns[min(spot, len(turns) - 1)][0], speaker, text, role, f"{speaker}/{topic}")
                )
    items = []
    for i, (when, speaker, text, role, fact) in enumerate(turns):
        memory = memory_pb2.Memory(
            name=f"m{i}",
            speaker=speaker,
            text=f"[{human_date(when)}] {speaker}: {text}" if when else f"{speaker}: {text}",
        )
        if when:
            memory.event_time.CopyFrom(to_timestamp(when))
        memory.create_time.FromSeconds(i)
        items.append(Item(memory, role, fact))
    return items


def resolve(items: list[Item], vectors: np.ndarray, settings: LifecycleSettings) -> None:
    """What the lifecycle does as each item arrives, in order."""
    for i, item in enumerate(items):
        live = [
            j for j in range(i) if items[j].state == "live" and items[j].memory.speaker == item.memory.speaker
        ]
        if not live:
            continue
        scores = vectors[live] @ vectors[i]
        for k in np.argsort(-scores)[: settings.conflict_candidates]:
            j = live[k]
            verdict = judge(
                items[j].memory,
                item.memory,
                float(scores[k]),
                duplicate_similarity=settings.duplicate_similarity,
                conflict_similarity=settings.conflict_similarity,
            )
            if verdict is None:
                continue
            if verdict.rule == "contradiction":
                items[j].state, items[j].target = "superseded", item
            else:
                item.state, item.target = "merged", items[j]
            break


def report(items: list[Item]) -> dict:
    roles = Counter(it.role for it in items)
    supersedes = [(it, it.target) for it in items if it.state == "superseded"]
    merges = [(it, it.target) for it in items if it.state == "merged"]

    def right_supersede(old: Item, new: Item) -> bool:
        return old.role in ("statement", "restatement") and new.role == "update" and old.fact == new.fact

    def right_merge(dup: Item, into: Item) -> bool:
        same_fact = dup.role == "restatement" and into.role == "statement" and dup.fact == into.fact
        same_words = content(dup.memory) == content(into.memory)
        return same_fact or same_words

    updates_found = sum(right_supersede(o, n) for o, n in supersedes)
    restatements_found = sum(right_merge(d, i) for d, i in merges if d.role == "restatement")
    wrong_supersedes = [(o, n) for o, n in supersedes if not right_supersede(o, n)]
    wrong_merges = [(d, i) for d, i in merges if not right_merge(d, i)]
    real_turns = roles["real"]
    return {
        "items": len(items),
        "real_turns": real_turns,
        "synthetic": {r: roles[r] for r in ("statement", "restatement", "update", "lookalike")},
        "supersedes": len(supersedes),
        "update_recall": updates_found / max(1, roles["update"]),
        "wrong_supersede_rate": len(wrong_supersedes) / max(1, len(supersedes)),
        "wrong_supersedes_per_1000_real_turns": 1000
        * sum(o.role == "real" for o, _ in wrong_supersedes)
        / max(1, real_turns),
        "merges": len(merges),
        "restatement_recall": restatements_found / max(1, roles["restatement"]),
        "duplicates_left": 1 - restatements_found / max(1, roles["restatement"]),
        "wrong_merge_rate": len(wrong_merges) / max(1, len(merges)),
        "examples": {
            "wrong_supersedes": [[o.memory.text, n.memory.text] for o, n in wrong_supersedes[:8]],
            "wrong_merges": [[d.memory.text, i.memory.text] for d, i in wrong_merges[:8]],
            "missed_updates": [
                it.memory.text
                for it in items
                if it.role == "update" and not any(n is it and right_supersede(o, n) for o, n in supersedes)
            ][:8],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conflicts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", required=True, type=Path, help="conversations (.jsonl), bench/FORMAT.md")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    parser.add_argument("--topics", type=int, default=4, help="synthetic topics per speaker (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N conversations")
    args = parser.parse_args(argv)

    settings, models = LifecycleSettings(), ModelFilesSettings()
    encoder = OnnxEncoder(export(models.embedding_model_dir(), models.model_cache_dir))
    rng = random.Random(args.seed)
    bundles = list(read_bundles(args.bundles))[: args.limit or None]
    everything: list[Item] = []
    for bundle in tqdm(bundles, desc="conversations", unit="conv"):
        items = build(bundle, rng, args.topics)
        vectors = np.concatenate(
            [encoder.encode([it.memory.text for it in items[k : k + 256]]) for k in range(0, len(items), 256)]
        )
        resolve(items, vectors, settings)
        everything += items
    result = report(everything)
    result["settings"] = {
        k: getattr(settings, k)
        for k in ("duplicate_similarity", "conflict_similarity", "conflict_candidates")
    }
    result["conversations"] = len(bundles)
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary, indent=2))
    for kind, examples in result["examples"].items():
        print(f"\n{kind}:")
        for example in examples:
            print("  ", example)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
