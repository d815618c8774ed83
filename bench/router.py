"""Learned cost-aware routing: the cost/quality curve, APGR and CPT on SmolLM2 vs a scripted model.

The eval: ~250 short questions in five families (capitals, opposites, one-digit sums, two-digit
products, words spelled backwards), each with one right answer, graded by `includes`.
- cheap: the embedded SmolLM2, actually run through Keel's eval runner (local provider,
  temperature 0, 24 tokens);
- strong: the fake provider scripted to answer the ideal answer, except on a known 10% of the
  samples (chosen by a hash of the id) where it answers "I don't know" — a model of known
  per-sample quality (the `echo` model repeating `metadata.strong`).
Both are variants of one suite in a temporary SQLite store. The router is trained with
`keel.orchestration.router.learned` on 70% of the samples (split by a hash of the id) and
evaluated on the other 30% only, beside random routing and an oracle that knows the grades.

Cost: a strong call is priced at gpt-4o's list price ($2.50 / $10 per million tokens) on the
tokens SmolLM2 used for the same sample; SmolLM2 runs locally at $0 in the pricing table. So the
cost saved at 95% of the strong model's quality is the share of calls kept off it.

Writes bench/results/router.json and docs/images/router-curve.svg.

    python bench/router.py [--per-family 50] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from keel.config import PricingConfig, load_config
from keel.evals import runs
from keel.evals.runner import run_suite
from keel.evals.suite import load_suite
from keel.orchestration.router import learned
from keel.store import open_store

STRONG_PRICE = PricingConfig(input=2.5, output=10.0)  # gpt-4o list price, $ per 1M tokens
STRONG_WRONG = 0.10  # the scripted strong model fails on this share of samples

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"),
            ("the United Kingdom", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
            ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Hungary", "Budapest"),
            ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("India", "New Delhi"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Argentina", "Buenos Aires"),
            ("Mexico", "Mexico City"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Cuba", "Havana"), ("Chile", "Santiago"),
            ("Colombia", "Bogota"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
            ("Switzerland", "Bern"), ("Czechia", "Prague"), ("Romania", "Bucharest"),
            ("Ukraine", "Kyiv"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
            ("the Philippines", "Manila"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
            ("Saudi Arabia", "Riyadh"), ("Iraq", "Baghdad"), ("Pakistan", "Islamabad"),
            ("Bangladesh", "Dhaka"), ("Brazil", "Brasilia"), ("Venezuela", "Caracas")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
             ("happy", "sad"), ("light", "dark"), ("open", "closed"), ("early", "late"),
             ("rich", "poor"), ("strong", "weak"), ("young", "old"), ("wet", "dry"),
             ("hard", "soft"), ("full", "empty"), ("high", "low"), ("loud", "quiet"),
             ("thick", "thin"), ("heavy", "light"), ("inside", "outside"), ("win", "lose"),
             ("push", "pull"), ("true", "false"), ("buy", "sell"), ("left", "right"),
             ("day", "night"), ("first", "last"), ("clean", "dirty"), ("cheap", "expensive"),
             ("near", "far"), ("love", "hate"), ("begin", "end"), ("question", "answer"),
             ("friend", "enemy"), ("north", "south"), ("east", "west"), ("awake", "asleep"),
             ("brave", "cowardly"), ("accept", "reject"), ("arrive", "leave"),
             ("remember", "forget"), ("sharp", "dull"), ("shallow", "deep"),
             ("narrow", "wide"), ("tall", "short"), ("safe", "dangerous"), ("noisy", "quiet"),
             ("sweet", "sour"), ("increase", "decrease"), ("maximum", "minimum"),
             ("entrance", "exit")]
WORDS = ["garden", "window", "planet", "silver", "orange", "pencil", "rabbit", "candle",
         "forest", "bottle", "yellow", "basket", "button", "dragon", "winter", "market",
         "castle", "spider", "coffee", "mirror", "pocket", "rocket", "turtle", "wallet",
         "butter", "ladder", "island", "jacket", "kitten", "lemon", "magnet", "needle",
         "parrot", "puzzle", "saddle", "tunnel", "violin", "walnut", "zipper", "anchor",
         "bridge", "cactus", "donkey", "engine", "falcon", "goblin", "hammer", "igloo",
         "jungle", "kettle"]


def build_samples(per_family: int, seed: int = 7) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for country, city in CAPITALS[:per_family]:
        out.append(("capital", f"What is the capital of {country}?", city))
    for word, opposite in OPPOSITES[:per_family]:
        out.append(("opposite", f"What is the opposite of the word '{word}'?", opposite))
    for _ in range(per_family):
        a, b = (int(x) for x in rng.integers(1, 10, 2))
        out.append(("sum", f"What is {a} + {b}? Reply with the number.", str(a + b)))
    for _ in range(per_family):
        a, b = (int(x) for x in rng.integers(12, 99, 2))
        out.append(("product", f"What is {a} times {b}? Reply with the number.", str(a * b)))
    for word in WORDS[:per_family]:
        question = f"Spell the word '{word}' backwards, letter by letter reversed."
        out.append(("backwards", question, word[::-1]))
    samples = []
    for i, (family, question, ideal) in enumerate(out):
        sid = f"{family}-{i}"
        bucket = int(hashlib.sha1(f"strong:{sid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        strong = "I don't know." if bucket < STRONG_WRONG else f"The answer is {ideal}."
        samples.append({"id": sid, "input": question, "ideal": ideal,
                        "metadata": {"family": family, "strong": strong}})
    return samples


def write_suite(folder: Path, samples: list[dict], concurrency: int) -> Path:
    with open(folder / "data.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in samples)
    (folder / "keel.yaml").write_text(yaml.safe_dump({
        "state_dir": str(folder / "state"),
        "tracing": {"enabled": False},
        "providers": {"local": {"kind": "local"}, "fake": {"kind": "fake"}},
        "models": {"smollm2": {"provider": "local"},
                   "scripted": {"provider": "fake", "model": "echo",
                                "pricing": STRONG_PRICE.model_dump()}},
    }))
    suite = folder / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "router-bench", "dataset": "data.jsonl", "config": "keel.yaml",
        "variants": {
            "cheap": {"model": "smollm2", "prompt": "Answer briefly.",
                      "params": {"temperature": 0, "max_tokens": 24}},
            "strong": {"model": "scripted", "params": {"temperature": 0},
                       "prompt": {"messages": [{"role": "user",
                                                "content": "{metadata.strong}"}]}},
        },
        "graders": [{"kind": "includes"}],
        "concurrency": concurrency,
    }))
    return suite


def svg_chart(report: dict, title: str) -> str:
    """Quality against strong-call share: learned, random and oracle routing."""
    w, h, left, bottom, top, right = 640, 420, 64, 52, 40, 170
    pw, ph = w - left - right, h - top - bottom
    pts = report["points"]
    share, quality = np.array(pts["share"]), np.array(pts["quality"])
    lo, hi = min(quality.min(), report["learned"]["cheap_quality"]), quality.max()
    lo, hi = np.floor(lo * 10) / 10, np.ceil(hi * 10) / 10
    oracle = np.array(report["oracle_points"])

    def xy(s, q):
        return left + s * pw, top + ph - (q - lo) / (hi - lo) * ph

    def path(xs, ys):
        return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}"
                        for i, (x, y) in enumerate(xy(a, b) for a, b in zip(xs, ys)))

    cq, sq = report["learned"]["cheap_quality"], report["learned"]["strong_quality"]
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
              f'font-family="sans-serif" font-size="12">'),
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14" font-weight="bold">{title}</text>']
    for i in range(11):
        x, _ = xy(i / 10, lo)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                     f'{i * 10}%</text>')
    steps = round((hi - lo) / 0.1)
    for i in range(steps + 1):
        q = lo + i * (hi - lo) / steps
        _, y = xy(0, q)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{q:.1f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 12}" text-anchor="middle">'
                 'share of requests sent to the strong model</text>')
    parts.append(f'<text transform="translate(16,{top + ph / 2}) rotate(-90)" '
                 'text-anchor="middle">quality (mean grade)</text>')
    parts.append(f'<path d="{path([0, 1], [cq, sq])}" stroke="#999" stroke-dasharray="6,4" '
                 'fill="none" stroke-width="2"/>')
    parts.append(f'<path d="{path(share, oracle)}" stroke="#2ca02c" stroke-dasharray="2,3" '
                 'fill="none" stroke-width="2"/>')
    parts.append(f'<path d="{path(share, quality)}" stroke="#1f77b4" fill="none" '
                 'stroke-width="2.5"/>')
    target = cq + 0.95 * (sq - cq)
    _, ty = xy(0, target)
    parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" '
                 'stroke="#d62728" stroke-width="1" stroke-dasharray="3,3"/>')
    cpt = report["learned"]["cpt"]["95%"]
    if cpt is not None:
        cx, cy = xy(cpt, target)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#d62728"/>')
    lx = left + pw + 12
    legend = [("#1f77b4", "", f"learned (APGR {report['learned']['apgr']:.2f})"),
              ("#999", "6,4", "random (APGR 0.50)"),
              ("#2ca02c", "2,3", f"oracle (APGR {report['oracle']['apgr']:.2f})"),
              ("#d62728", "3,3", "95% of the gap")]
    for i, (color, dash, label) in enumerate(legend):
        y = top + 10 + i * 20
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 22}" y2="{y}" stroke="{color}" '
                     f'stroke-width="2"{dash_attr}/>')
        parts.append(f'<text x="{lx + 28}" y="{y + 4}">{label}</text>')
    if cpt is not None:
        parts.append(f'<text x="{lx}" y="{top + 100}">CPT(95%) = {cpt:.0%}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


async def grade_both(samples: list[dict], concurrency: int) -> tuple[list[learned.Example], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        suite = load_suite(write_suite(folder, samples, concurrency))
        config = load_config(suite.config_path())
        store = open_store(config.database_url())
        try:
            started = time.perf_counter()
            outcome = await run_suite(suite, config, store, progress=True)
            seconds = time.perf_counter() - started
            examples = learned.examples_from_runs(store, [outcome.run_id], "strong", "cheap")
            cells = runs.results(store, outcome.run_id)
        finally:
            store.close()
    cheap_cells = {c["sample_id"]: c for c in cells if c["variant"] == "cheap"}
    cost = {sid: STRONG_PRICE.cost(c["prompt_tokens"], c["completion_tokens"])
            for sid, c in cheap_cells.items()}
    return examples, {"seconds": round(seconds, 1), "strong_cost": cost,
                      "answers": {sid: (c.get("output") or {}).get("text")
                                  for sid, c in cheap_cells.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-family", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    console = Console()
    samples = build_samples(args.per_family)
    family = {s["id"]: s["metadata"]["family"] for s in samples}
    examples, run = asyncio.run(grade_both(samples, args.concurrency))
    console.print(f"graded {len(examples)} samples on both models in {run['seconds']} s")

    with tempfile.TemporaryDirectory() as tmp:
        embed = learned.default_embed(Path(tmp) / "emb.npz")
        model = learned.train(examples, embed=embed, metadata={"strong": "strong",
                                                                "cheap": "cheap"})
        report = learned.evaluate(model, examples, embed=embed)
    test = learned.held_out(model, examples)
    strong = np.array([e.strong for e in test])
    cheap = np.array([e.cheap for e in test])
    oracle = learned.curve(learned.oracle_scores(strong, cheap), strong, cheap)
    report["oracle_points"] = oracle.quality.tolist()

    by_family = {}
    for e in examples:
        f = by_family.setdefault(family[e.sample_id], {"n": 0, "cheap": 0.0, "strong": 0.0})
        f["n"] += 1
        f["cheap"] += e.cheap
        f["strong"] += e.strong
    for f in by_family.values():
        f["cheap"], f["strong"] = round(f["cheap"] / f["n"], 3), round(f["strong"] / f["n"], 3)

    table = Table(title=f"learned router on {report['samples']} held-out samples "
                        f"(trained on {model.metadata['train_samples']})")
    for name in ("strong calls", "threshold", "quality", "PGR", "random quality", "cost / 1k"):
        table.add_column(name, justify="right")
    mean_cost = float(np.mean([run["strong_cost"][e.sample_id] for e in test]))
    for row in report["curve"]:
        table.add_row(f"{row['strong_share']:.0%}", f"{row['threshold']:.3f}",
                      f"{row['quality']:.3f}", "-" if row["pgr"] is None else f"{row['pgr']:.3f}",
                      f"{row['random_quality']:.3f}",
                      f"${row['strong_share'] * mean_cost * 1000:.4f}")
    console.print(table)
    lr = report["learned"]
    for name, part in (("learned", lr), ("random", report["random"]),
                       ("oracle", report["oracle"])):
        cpt = "  ".join(f"CPT({k})={'-' if v is None else f'{v:.0%}'}"
                        for k, v in part["cpt"].items())
        console.print(f"{name:8} APGR {part['apgr']:.3f}  {cpt}")
    cpt95 = lr["cpt"]["95%"]
    saved = None if cpt95 is None else 1 - cpt95  # the cheap model costs $0 in the table
    console.print(f"quality: strong {lr['strong_quality']:.3f}, cheap {lr['cheap_quality']:.3f};"
                  f" per family (cheap/strong): "
                  + ", ".join(f"{k} {v['cheap']:.2f}/{v['strong']:.2f}"
                              for k, v in by_family.items()))
    if saved is not None:
        console.print(f"at 95% of the quality gap: {cpt95:.0%} strong calls, cost "
                      f"${cpt95 * mean_cost * 1000:.4f} per 1,000 requests instead of "
                      f"${mean_cost * 1000:.4f} all-strong: {saved:.0%} saved "
                      f"(random routing needs 95% strong calls: 5% saved)")

    svg = ROOT / "docs" / "images" / "router-curve.svg"
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(svg_chart(report, f"Learned router: SmolLM2 (cheap) vs scripted strong, "
                                     f"{report['samples']} held-out samples"))
    out = HERE / "results" / "router.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "samples": len(examples), "held_out": report["samples"],
        "trained_on": model.metadata["train_samples"], "run_seconds": run["seconds"],
        "families": by_family, "learned": lr, "random": report["random"],
        "oracle": report["oracle"], "curve": report["curve"],
        "strong_price_per_1m": STRONG_PRICE.model_dump(), "cheap_price_per_1m": 0.0,
        "mean_strong_cost_per_call_usd": mean_cost, "cost_saved_at_95": saved,
    }, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)} and {svg.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
