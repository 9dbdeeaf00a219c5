"""Parametric-memory benchmark: what a LoRA adapter distilled from a cube's facts remembers.

For cubes of 10, 20 and 50 facts (``bench/data/facts.jsonl``: first-person statements a user
made, each with two questions phrased differently from the statement and from every lesson the
distiller writes), it measures on the engine the trainer runs:

- fact recall (the expected answer appears in a greedy reply to each question) of the base model
  with no memory, of the base model with every fact as quoted plaintext memory (as the scheduler
  places retrieved memories), and of the base model with the adapter alone;
- held-out recall on the distiller's own held-out phrasing (what the trainer reports);
- perplexity of general text (``services/inference/data/general.txt``) without and with the adapter,
  after the trainer's budget step (the adapter's scale lowered until perplexity is within 5%);
- training time (lesson derivation excluded; the replay pool included) and adapter bytes.

The training settings are the trainer service's defaults (``TrainConfig``). The questions are
never shown to the distiller. Settings are tried on ``bench/data/facts-dev.jsonl`` (other facts,
questions written the same way), so that the figures of ``facts.jsonl`` are not tuned on:

    python -m bench.lora --out lora.json
    python -m bench.lora --facts bench/data/facts-dev.jsonl --sizes 20 --no-baselines --set epochs=4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from services.common.settings import LanguageModelSettings
from services.inference.lessons import lessons
from services.inference.llm import load_language_model
from services.inference.lora import Adapters, TrainConfig, contains, general_texts, recall

FACTS = Path(__file__).resolve().parent / "data" / "facts.jsonl"


def ask_all(
    adapters: Adapters, facts: list[dict], *, adapter: str | None, memories=()
) -> tuple[float, list[dict]]:
    answers = []
    for fact in facts:
        for question in fact["questions"]:
            reply = adapters.answer(question, adapter=adapter, memories=memories, max_new_tokens=32)
            answers.append({"question": question, "answer": reply, "right": contains(reply, fact["answer"])})
    return sum(a["right"] for a in answers) / len(answers), answers


def run(sizes: list[int], config: TrainConfig, facts_path: Path = FACTS, *, baselines: bool = True) -> dict:
    facts = [json.loads(line) for line in facts_path.read_text().splitlines() if line.strip()]
    if max(sizes) > len(facts):
        raise SystemExit(f"{facts_path} has {len(facts)} facts; sizes go up to {max(sizes)}")
    lm = load_language_model(LanguageModelSettings())
    adapters = Adapters(lm)
    general = general_texts()
    ppl_before = adapters.perplexity(general, adapter=None)
    rows, misses = [], {}
    for n in sizes:
        cube = facts[:n]
        taught = lessons((f"m{i}", f"user: {f['statement']}", "user") for i, f in enumerate(cube))
        recall_base = recall_plaintext = None
        if baselines:
            recall_base, _ = ask_all(adapters, cube, adapter=None)
            recall_plaintext, _ = ask_all(
                adapters, cube, adapter=None, memories=[f["statement"] for f in cube]
            )
        with tqdm(desc=f"training on {n} facts", unit="step", file=sys.stderr) as bar:

            def progress(step: int, steps: int, loss: float) -> None:
                bar.total = steps
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.3f}")

            trained = adapters.train(f"bench-{n}", taught, config, progress)
        scale, ppl_after = adapters.fit_scale(f"bench-{n}", general, ppl_before, config.max_ppl_increase)
        blob = adapters.pack(f"bench-{n}", config, {})
        recall_adapter, answers = ask_all(adapters, cube, adapter=f"bench-{n}")
        right, asked = recall(adapters, taught, adapter=f"bench-{n}")
        row = {
            "facts": n,
            "questions": 2 * n,
            "lessons": sum(not t.held_out for t in taught),
            "recall_base": _round(recall_base),
            "recall_plaintext": _round(recall_plaintext),
            "recall_adapter": round(recall_adapter, 3),
            "heldout_recall": round(right / asked, 3) if asked else None,
            "ppl_before": round(ppl_before, 3),
            "ppl_after": round(ppl_after, 3),
            "scale": scale,
            "train_seconds": round(trained["train_seconds"], 1),
            "train_steps": trained["steps"],
            "adapter_bytes": len(blob),
        }
        row["ppl_change"] = round(row["ppl_after"] / row["ppl_before"] - 1, 4)
        rows.append(row)
        misses[str(n)] = [a for a in answers if not a["right"]]
        adapters.remove(f"bench-{n}")
        print(json.dumps(row), flush=True)
    return {
        "benchmark": "lora",
        "facts_file": facts_path.name,
        "model": lm.model_id,
        "config": asdict(config),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "device": str(lm.device),
            "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
        },
        "rows": rows,
        "adapter_misses": misses,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(result: dict) -> str:
    head = "| facts | recall base | recall plaintext | recall adapter | held-out (distiller) | ppl before → after | scale | train s | adapter MB |"
    lines = [head, "|" + "---|" * 9]
    for r in result["rows"]:
        lines.append(
            f"| {r['facts']} | {_cell(r['recall_base'])} | {_cell(r['recall_plaintext'])} | **{r['recall_adapter']:.2f}** | "
            f"{r['heldout_recall']:.2f} | {r['ppl_before']:.2f} → {r['ppl_after']:.2f} ({100 * r['ppl_change']:+.1f}%) | {r['scale']:.2f} | "
            f"{r['train_seconds']:.0f} | {r['adapter_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def _config(overrides: list[str]) -> TrainConfig:
    config = TrainConfig()
    changes = {}
    for item in overrides:
        field, _, value = item.partition("=")
        if not hasattr(config, field) or not value:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with a TrainConfig field")
        current = getattr(config, field)
        changes[field] = tuple(value.split(",")) if isinstance(current, tuple) else type(current)(value)
    return replace(config, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,20,50", help="cube sizes in facts (default 10,20,50)")
    parser.add_argument("--out", default="bench-lora.json", help="where the JSON result goes")
    parser.add_argument(
        "--facts",
        type=Path,
        default=FACTS,
        help="facts with their questions (default: bench/data/facts.jsonl; "
        "bench/data/facts-dev.jsonl is the set for trying settings)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a TrainConfig field, e.g. --set epochs=8 (repeatable)",
    )
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip recall of the base model without and with plaintext memory (quicker trials)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    result = run(sizes, _config(args.set), args.facts, baselines=not args.no_baselines)
    result["seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
