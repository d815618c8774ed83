"""`keel serve --workers 2` against one worker: throughput and latency on this machine.

Starts `keel fake-upstream` and two Keels on it (openai provider, tracing on, SQLite store, as
bench/overhead.py configures them): one with `--workers 1`, one with `--workers 2`. Sends chat
requests at 16 and 64 in flight to each, in `--rounds` slices that take turns, so noise from
elsewhere on the machine falls on both alike. Prints p50/p90/p99 latency and req/s, and the
second's throughput over the first's; writes bench/results/workers.json.

The client, the upstream and the workers share the machine's cores: with 2 cores, a second
worker has little idle CPU to use, and the figure says how much it still gains (or costs).

    python bench/workers.py [--requests 4000] [--warmup 300] [--rounds 4]
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

import aiohttp
from rich.console import Console
from rich.table import Table

# Beside this script: the same client, config and process helpers as the overhead benchmark.
from overhead import KEEL_CONFIG, load, start, summarise
from processes import free_port, wait_ready

HERE = Path(__file__).resolve().parent
CONCURRENCY = (16, 64)
WORKERS = (1, 2)


async def wait_workers(url: str, n: int, timeout: float = 120) -> None:
    """Poll /readyz with new connections until `n` different worker pids have answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: saw only workers {seen}")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        seen.add((await r.json())["pid"])
                        continue
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.1)  # not listening yet


async def measure(targets: dict[str, str], requests: int, warmup: int, rounds: int) -> dict:
    results: dict = {}
    names = list(targets)
    per_round = max(1, requests // rounds)
    for concurrency in CONCURRENCY:
        for url in targets.values():
            await load(url, warmup, concurrency)
        latencies = {name: [] for name in names}
        elapsed = dict.fromkeys(names, 0.0)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                lat, secs = await load(targets[name], per_round, concurrency)
                latencies[name] += lat
                elapsed[name] += secs
        results[concurrency] = {name: summarise(latencies[name], elapsed[name])
                                for name in names}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per cell")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices each cell's requests are sent in, the targets taking turns")
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-workers-"))
    up = free_port()
    py = sys.executable
    procs = [start([py, "-m", "keel", "fake-upstream", "--port", str(up)], workdir)]
    ports = {}
    for n in WORKERS:
        ports[n] = free_port()
        (workdir / f"keel-{n}.yaml").write_text(
            KEEL_CONFIG.format(state=workdir / f"state-{n}", upstream=up))
        procs.append(start([py, "-m", "keel", "serve", "--config", f"keel-{n}.yaml",
                            "--port", str(ports[n]), "--workers", str(n)], workdir))
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{up}/v1/models"))
        for n, port in ports.items():
            asyncio.run(wait_workers(f"http://127.0.0.1:{port}/readyz", n))
        targets = {f"workers={n}": f"http://127.0.0.1:{port}/v1/chat/completions"
                   for n, port in ports.items()}
        results = asyncio.run(measure(targets, opts.requests, opts.warmup, opts.rounds))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    report(results, opts)


def report(results: dict, opts) -> None:
    table = Table(title=f"keel serve --workers ({opts.requests} requests per cell, "
                        f"{os.cpu_count()} cores)")
    for col in ("in flight", "target", "p50 ms", "p90 ms", "p99 ms", "req/s", "vs workers=1"):
        table.add_column(col, justify="right")
    summary = {}
    for concurrency, rows in results.items():
        one = rows["workers=1"]["rps"]
        for name, r in rows.items():
            ratio = r["rps"] / one
            table.add_row(str(concurrency), name, f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                          f"{r['p99_ms']:.2f}", f"{r['rps']:.0f}", f"{ratio:.2f}x")
        summary[f"rps_ratio_c{concurrency}"] = rows["workers=2"]["rps"] / one
    Console().print(table)
    print(", ".join(f"{k}: {v:.2f}" for k, v in summary.items()))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "workers.json").write_text(json.dumps(
        {"results": results, "summary": summary, "cores": os.cpu_count(),
         "requests": opts.requests, "rounds": opts.rounds}, indent=2))


if __name__ == "__main__":
    main()
