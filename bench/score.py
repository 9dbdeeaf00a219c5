"""Scorer of bench/FORMAT.md: evidence recall at k and at token budgets, session recall, answer
containment and latency, overall and per category.

    python -m bench.score --out out.jsonl --gold gold.jsonl --bundles bundles.jsonl [--summary s.json]
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from memos_sdk.tokens import count_tokens

KS = (1, 5, 10, 20, 50)
BUDGETS = (500, 1000, 2000)
SESSION_KS = (1, 5, 10)


def read_jsonl(path: Path) -> list[dict]:
    # Split at "\n" only: splitlines() also splits at U+2028 and the like, which LongMemEval's
    # texts hold inside JSON strings.
    return [json.loads(line) for line in Path(path).read_text().split("\n") if line.strip()]


def normalise(text: str) -> str:
    text = str(text).lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def within_budget(items: list[dict], budget: int) -> list[dict]:
    """Items in order while their tokens fit; the first that does not fit ends the list."""
    taken, used = [], 0
    for item in items:
        tokens = count_tokens(item["text"])
        if used + tokens > budget:
            break
        taken.append(item)
        used += tokens
    return taken


def _recall(items: Iterable[dict], evidence: set[str]) -> tuple[float, bool]:
    found = {s for item in items for s in item.get("sources", [])} & evidence
    return len(found) / len(evidence), found == evidence


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def score(
    outputs: list[dict], gold: list[dict], turn_sessions: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Metrics per group ("all" and each category)."""
    by_id = {o["question_id"]: o for o in outputs}
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for g in gold:
        out = by_id.get(g["question_id"])
        if out is None:
            continue
        items = out.get("items", [])[:50]
        row: dict[str, float] = {"latency_ms": float(out.get("latency_ms", float("nan")))}
        evidence = set(g.get("evidence") or [])
        if evidence:
            for k in KS:
                row[f"R@{k}"], all_found = _recall(items[:k], evidence)
                row[f"Rall@{k}"] = float(all_found)
            for b in BUDGETS:
                row[f"R@{b}t"], _ = _recall(within_budget(items, b), evidence)
        if g.get("evidence_sessions"):
            wanted = set(g["evidence_sessions"])
            for k in SESSION_KS:
                touched = {turn_sessions.get(s) for item in items[:k] for s in item.get("sources", [])}
                row[f"S@{k}"] = float(bool(touched & wanted))
        answer = normalise(g.get("answer", ""))
        if answer:
            for b in BUDGETS:
                context = normalise(" ".join(i["text"] for i in within_budget(items, b)))
                row[f"A@{b}t"] = float(answer in context)
        row["tokens@10"] = float(sum(count_tokens(i["text"]) for i in items[:10]))
        rows["all"].append(row)
        rows[str(g.get("category", "-"))].append(row)
    summary = {}
    for group, group_rows in rows.items():
        metrics: dict[str, float] = {"questions": float(len(group_rows))}
        names = sorted({k for r in group_rows for k in r if k != "latency_ms"}, key=_metric_order)
        for name in names:
            values = [r[name] for r in group_rows if name in r]
            metrics[name] = sum(values) / len(values)
        latencies = [r["latency_ms"] for r in group_rows if r["latency_ms"] == r["latency_ms"]]
        metrics["p50_ms"] = _percentile(latencies, 0.50)
        metrics["p95_ms"] = _percentile(latencies, 0.95)
        summary[group] = metrics
    return summary


METRIC_FAMILIES = ("R", "Rall", "S", "A", "tokens")


def _metric_order(name: str) -> tuple[int, bool, int]:
    """R@k, then R@Bt, Rall, S, A, tokens; by number within each."""
    prefix, _, rest = name.partition("@")
    family = METRIC_FAMILIES.index(prefix) if prefix in METRIC_FAMILIES else len(METRIC_FAMILIES)
    return family, rest.endswith("t"), int(re.sub(r"\D", "", rest) or 0)


def turn_sessions_of(bundles_path: Path) -> dict[str, str]:
    mapping = {}
    for bundle in read_jsonl(bundles_path):
        for session in bundle.get("sessions", []):
            for turn in session.get("turns", []):
                mapping[turn["id"]] = session.get("id", "")
    return mapping


def format_table(summary: dict[str, dict[str, float]]) -> str:
    groups = ["all", *sorted(g for g in summary if g != "all")]
    metrics = [m for m in summary["all"] if m != "questions"]
    width = max(8, *(len(g) for g in groups))
    lines = [f"{'metric':<10}" + "".join(f"{g:>{width + 2}}" for g in groups)]
    lines.append(
        f"{'questions':<10}" + "".join(f"{int(summary[g]['questions']):>{width + 2}}" for g in groups)
    )
    for m in metrics:
        decimals = 1 if m.endswith("_ms") or m.startswith("tokens") else 3
        cells = []
        for g in groups:
            v = summary[g].get(m)
            cells.append(f"{'-':>{width + 2}}" if v is None else f"{v:>{width + 2}.{decimals}f}")
        lines.append(f"{m:<10}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score retrieval output against gold (bench/FORMAT.md).")
    parser.add_argument(
        "--out", required=True, type=Path, help="output of bench.retrieval (one line per question)"
    )
    parser.add_argument("--gold", required=True, type=Path, help="*.gold.jsonl")
    parser.add_argument(
        "--bundles", required=True, type=Path, help="the bundles the output was made from (turn -> session)"
    )
    parser.add_argument("--summary", type=Path, help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    summary = score(read_jsonl(args.out), read_jsonl(args.gold), turn_sessions_of(args.bundles))
    print(format_table(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
