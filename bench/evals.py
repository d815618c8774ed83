"""Eval runner throughput: a 1,000-sample suite end to end on the fake provider.

One variant (the fake `echo` model) through an in-process gateway, three graders: `includes`
and `regex` (deterministic) and `fact` (model-graded, on a fake judge that always answers "C").
So 1,000 cells make 2,000 gateway calls (answer + judge), each traced, every result written to a
SQLite store. Timed end to end: dataset import, gateway start, all cells, the summary. Run again
with tracing off to show what tracing costs. Target on 2 cores: <= 10 s with tracing on.
Writes bench/results/evals.json.

    python bench/evals.py [--samples 1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from keel.config import load_config  # noqa: E402
from keel.evals.runner import run_suite  # noqa: E402
from keel.evals.suite import load_suite  # noqa: E402
from keel.store import open_store  # noqa: E402

TARGET_S = 10.0


def write_inputs(folder: Path, samples: int, concurrency: int, tracing: bool) -> Path:
    with open(folder / "data.jsonl", "w") as f:
        for i in range(samples):
            ideal = f"answer {i}"
            text = f"Question {i}: what is {ideal}?" if i % 4 else f"Question {i}: unknown?"
            f.write(json.dumps({"id": f"q{i}", "input": text, "ideal": ideal}) + "\n")
    (folder / "keel.yaml").write_text(yaml.safe_dump({
        "state_dir": str(folder / "state"),
        "tracing": {"enabled": tracing},
        "providers": {"fake": {"kind": "fake"}},
        "models": {"echo": {"provider": "fake", "pricing": {"input": 0.15, "output": 0.6}},
                   "judge": {"provider": "fake", "model": "fixed:C"}},
    }))
    suite = folder / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "bench", "dataset": "data.jsonl", "config": "keel.yaml",
        "variants": {"echo": {"model": "echo", "prompt": "Answer briefly.",
                              "params": {"temperature": 0, "max_tokens": 64}}},
        "graders": [{"kind": "includes"}, {"kind": "regex", "pattern": r"Question \d+"},
                    {"kind": "fact"}],
        "judge": {"model": "judge"},
        "concurrency": concurrency,
    }))
    return suite


async def one_run(samples: int, concurrency: int, tracing: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        suite_path = write_inputs(folder, samples, concurrency, tracing)
        started = time.perf_counter()
        suite = load_suite(suite_path)
        config = load_config(suite.config_path())
        store = open_store(config.database_url())
        try:
            outcome = await run_suite(suite, config, store, progress=False)
        finally:
            store.close()
        seconds = time.perf_counter() - started
    graders = outcome.summary["variants"]["echo"]["graders"]
    return {
        "tracing": tracing, "samples": samples, "concurrency": concurrency,
        "seconds": round(seconds, 3), "cells_per_s": round(samples / seconds, 1),
        "gateway_calls": samples * 2,
        "means": {g: round(s["mean"], 3) for g, s in graders.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = [asyncio.run(one_run(args.samples, args.concurrency, tracing))
               for tracing in (True, False)]
    table = Table(title=f"eval runner: {args.samples} samples, 3 graders (1 model-graded)")
    for name in ("tracing", "seconds", "cells/s", "gateway calls", "means"):
        table.add_column(name, justify="left" if name in ("tracing", "means") else "right")
    for r in results:
        table.add_row("on" if r["tracing"] else "off", f"{r['seconds']:.2f}",
                      f"{r['cells_per_s']:.0f}", str(r["gateway_calls"]),
                      " ".join(f"{g}={m}" for g, m in r["means"].items()))
    console = Console()
    console.print(table)
    on = results[0]["seconds"]
    verdict = "meets" if on <= TARGET_S else "misses"
    console.print(f"tracing on: {on:.2f} s, {verdict} the {TARGET_S:.0f} s target "
                  f"({os.cpu_count()} cores); tracing adds "
                  f"{on - results[1]['seconds']:+.2f} s")
    out = HERE / "results" / "evals.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"target_s": TARGET_S, "cpu_count": os.cpu_count(),
                               "python": sys.version.split()[0], "runs": results}, indent=2)
                   + "\n")
    console.print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
