"""Gateway overhead: the same requests sent to the fake upstream directly and through Keel.

Starts `keel fake-upstream` and `keel serve` (openai provider, tracing on, SQLite store) as
separate processes, plus a bare aiohttp pass-through for reference, then sends N chat requests at
concurrency 1 and 16 to each, in `--rounds` slices that take turns, so noise from elsewhere on
the machine falls on every target alike. Prints p50/p90/p99 latency and req/s, and the difference
Keel adds; writes bench/results/overhead.json. Targets on 2 cores: <= 1 ms added at p50 at
concurrency 1, >= 1,500 req/s at concurrency 16, p99 at concurrency 16 within 2x the bare
pass-through's.

`--ops` adds Keel with LLMOps on, in the same rounds: auth (every request carries a virtual key,
looked up and checked), the key's rate limits and budget and the model's own limits checked and
settled, and Prometheus metrics (on in every Keel). `--ops memory` keeps the limits in the
process; `--ops redis` also runs one with them in a `redis-server` it starts (Debian's package),
which measures what Redis-backed limits add per request.

`--orchestration` adds Keel with the cache and router layers on, on their miss path: an exact
cache (every request asks a new question, so each is looked up, missed and stored) and a router
over two deployments of the upstream (each request picks one, with its breaker and retries
armed). `--orchestration semantic` caches semantically, which embeds each question (MiniLM).

    python bench/overhead.py [--requests 4000] [--warmup 500] [--rounds 8] [--ops memory|redis]
                             [--orchestration exact|semantic]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from processes import free_port, wait_ready  # bench/processes.py, beside this script

HERE = Path(__file__).resolve().parent
BARE = "bare aiohttp pass-through"
VARY = "keel +cache"  # targets whose name starts so get a new question every request
BODY = json.dumps({
    "model": "echo",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France? Answer in one word."},
    ],
    "max_tokens": 16,
}).encode()

KEEL_CONFIG = """
state_dir: {state}
providers:
  upstream: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1"}}
models:
  echo: {{provider: upstream, model: echo}}
tracing: {{enabled: true}}
"""

# The same Keel with LLMOps on: auth (KEEL_ADMIN_KEY in its environment), the model's own rate
# limits, and (appended) the state section. The limits are far above what the bench sends, so
# every request is checked and settled but none refused.
OPS_CONFIG = KEEL_CONFIG.replace(
    "models:\n  echo: {{provider: upstream, model: echo}}",
    "models:\n  echo: {{provider: upstream, model: echo, limits: {{rpm: 100000000, "
    "tpm: 1000000000}}, pricing: {{input: 0.15, output: 0.6}}}}",
) + "auth: {{refresh_interval_s: 1.0}}\n"
ADMIN_KEY = "bench-admin-key"

# Cache and router on (miss path); the question changes with every request (see `load`).
ORCHESTRATION_CONFIG = KEEL_CONFIG.replace(
    "models:\n  echo: {{provider: upstream, model: echo}}",
    "models:\n  echo:\n    cache: {{mode: {mode}, reuse: always}}\n"
    "    router:\n      deployments:\n        - {{provider: upstream, model: echo}}\n"
    "        - {{provider: upstream, model: echo}}\n",
)


def varied_body(i: int) -> bytes:
    """The benchmark's request with a question of its own: a cache miss every time."""
    return json.dumps({
        "model": "echo",
        "messages": [{"role": "user", "content": f"What is the capital of country number {i}?"}],
        "max_tokens": 16,
    }).encode()


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_VARIED = [0]  # requests sent with a question of their own, across calls


async def load(url: str, total: int, concurrency: int,
               headers: dict | None = None, vary: bool = False) -> tuple[list[float], float]:
    """Send `total` requests from `concurrency` clients; their latencies and the elapsed time.
    With `vary`, every request asks a question never asked before (cache misses)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < total:
                next_index += 1
                t0 = time.perf_counter()
                if vary:
                    _VARIED[0] += 1
                    body = varied_body(_VARIED[0])
                else:
                    body = BODY
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return latencies, elapsed


def summarise(latencies: list[float], elapsed: float) -> dict:
    latencies = sorted(latencies)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "rps": len(latencies) / elapsed, "n": len(latencies)}


async def measure(targets: dict[str, str], requests: int, warmup: int, rounds: int,
                  headers: dict[str, dict] | None = None) -> dict:
    """Each cell's requests go in `rounds` slices, the targets taking turns (in a rotating
    order), so a burst of load from elsewhere on the machine falls on all of them alike.
    `headers` maps a target to what its requests carry (an API key)."""
    headers = headers or {}
    results: dict = {}
    names = list(targets)
    per_round = max(1, requests // rounds)
    for concurrency in (1, 16):
        for name, url in targets.items():
            await load(url, warmup, concurrency, headers.get(name), name.startswith(VARY))
        latencies = {name: [] for name in names}
        elapsed = dict.fromkeys(names, 0.0)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                lat, secs = await load(targets[name], per_round, concurrency, headers.get(name),
                                       name.startswith(VARY))
                latencies[name] += lat
                elapsed[name] += secs
        results[concurrency] = {name: summarise(latencies[name], elapsed[name])
                                for name in names}
    return results


async def trace_stats(url: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            return (await r.json())["traces"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--compare-src", type=Path, default=None, metavar="DIR",
                        help="also measure the Keel in this source tree (a checkout of an earlier "
                             "commit, say), in the same rounds, as 'keel (DIR)'")
    parser.add_argument("--rounds", type=int, default=8,
                        help="slices each cell's requests are sent in, the targets taking turns")
    parser.add_argument("--orchestration", choices=["exact", "semantic"], default=None,
                        help="also measure Keel with the cache (this mode) and router on, on "
                             "their miss path")
    parser.add_argument("--ops", choices=["memory", "redis"], default=None,
                        help="also measure Keel with auth, limits and budgets on: 'memory' "
                             "(in-process limits), 'redis' (that and Redis-backed limits)")
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    up, keel, bare, other = free_port(), free_port(), free_port(), free_port()
    (workdir / "keel.yaml").write_text(KEEL_CONFIG.format(state=workdir / "state", upstream=up))
    py = sys.executable
    procs = [
        start([py, "-m", "keel", "fake-upstream", "--port", str(up)], workdir),
        start([py, "-m", "keel", "serve", "--config", "keel.yaml", "--port", str(keel)], workdir),
        start([py, str(HERE / "passthrough.py"), "--port", str(bare),
               "--upstream", f"http://127.0.0.1:{up}"], workdir),
    ]
    if opts.compare_src:
        (workdir / "keel-other.yaml").write_text(
            KEEL_CONFIG.format(state=workdir / "state-other", upstream=up))
        env = dict(os.environ, PYTHONPATH=str(opts.compare_src.resolve()))
        procs.append(subprocess.Popen(
            [py, "-m", "keel", "serve", "--config", "keel-other.yaml", "--port", str(other)],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    ops_targets = start_ops(opts.ops, workdir, up, procs) if opts.ops else {}
    if opts.orchestration:
        name = f"{VARY} +router ({opts.orchestration})"
        config = workdir / "keel-orchestration.yaml"
        config.write_text(ORCHESTRATION_CONFIG.format(
            state=workdir / "state-orchestration", upstream=up, mode=opts.orchestration))
        port = free_port()
        procs.append(start([py, "-m", "keel", "serve", "--config", config.name, "--port",
                            str(port)], workdir))
        ops_targets[name] = port
    headers: dict[str, dict] = {}
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{up}/v1/models"))
        asyncio.run(wait_ready(f"http://127.0.0.1:{keel}/readyz"))
        asyncio.run(wait_ready(f"http://127.0.0.1:{bare}/v1/models"))
        if opts.compare_src:
            asyncio.run(wait_ready(f"http://127.0.0.1:{other}/readyz"))
        targets = {
            "direct": f"http://127.0.0.1:{up}/v1/chat/completions",
            BARE: f"http://127.0.0.1:{bare}/v1/chat/completions",
            "keel": f"http://127.0.0.1:{keel}/v1/chat/completions",
        }
        if opts.compare_src:
            targets[f"keel ({opts.compare_src})"] = f"http://127.0.0.1:{other}/v1/chat/completions"
        for name, port in ops_targets.items():
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}/readyz"))
            targets[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            if name.startswith("keel +ops"):
                secret = asyncio.run(create_key(f"http://127.0.0.1:{port}/v1/keys"))
                headers[name] = {"Authorization": f"Bearer {secret}"}
        results = asyncio.run(measure(targets, opts.requests, opts.warmup, opts.rounds, headers))
        time.sleep(1)  # let the trace writer catch up before reading its counters
        results["keel_traces"] = asyncio.run(trace_stats(f"http://127.0.0.1:{keel}/readyz"))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    report(results, opts)


def start_ops(mode: str, workdir: Path, upstream: int, procs: list) -> dict[str, int]:
    """Start Keel with LLMOps on (and Redis for `redis`); their names and ports."""
    py = sys.executable
    env = dict(os.environ, KEEL_ADMIN_KEY=ADMIN_KEY)
    configs = {"keel +ops": ""}
    if mode == "redis":
        redis_port = free_port()
        procs.append(start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"], workdir))
        configs["keel +ops (redis)"] = f'state: {{redis_url: "redis://127.0.0.1:{redis_port}/0"}}\n'
    ports = {}
    for i, (name, extra) in enumerate(configs.items()):
        config = workdir / f"keel-ops-{i}.yaml"
        config.write_text(OPS_CONFIG.format(state=workdir / f"state-ops-{i}", upstream=upstream)
                          + extra)
        ports[name] = free_port()
        procs.append(subprocess.Popen(
            [py, "-m", "keel", "serve", "--config", config.name, "--port", str(ports[name])],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return ports


async def create_key(url: str) -> str:
    """A key whose limits and budget are checked on every request but never reached."""
    body = {"name": "bench", "rpm": 100_000_000, "tpm": 1_000_000_000, "budget_usd": 1e9,
            "period": "month", "metadata": {"team": "bench"}}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body,
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating the bench key: HTTP {r.status} {await r.text()}")
            return (await r.json())["secret"]


def report(results: dict, opts) -> None:
    traces = results.pop("keel_traces")
    table = Table(title=f"Gateway overhead ({opts.requests} requests per cell, {os.cpu_count()} cores)")
    for col in ("concurrency", "target", "p50 ms", "p90 ms", "p99 ms", "req/s", "added p50 ms"):
        table.add_column(col, justify="right")
    for concurrency, rows in results.items():
        direct = rows["direct"]["p50_ms"]
        for name, r in rows.items():
            added = "" if name == "direct" else f"{r['p50_ms'] - direct:+.3f}"
            table.add_row(str(concurrency), name, f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                          f"{r['p99_ms']:.3f}", f"{r['rps']:.0f}", added)
    Console().print(table)
    keel1, keel16 = results[1]["keel"], results[16]["keel"]
    bare16 = results[16][BARE]
    summary = {
        "added_p50_ms_c1": keel1["p50_ms"] - results[1]["direct"]["p50_ms"],
        "keel_rps_c16": keel16["rps"],
        "keel_p99_ms_c16": keel16["p99_ms"],
        "bare_p99_ms_c16": bare16["p99_ms"],
        "p99_ratio_c16": keel16["p99_ms"] / bare16["p99_ms"],
        "traces": traces,
        "targets": {"added_p50_ms_c1": 1.0, "keel_rps_c16": 1500, "p99_ratio_c16": 2.0},
    }
    for name in [n for n in results[1] if n.startswith(("keel +ops", VARY))]:
        summary[name] = {
            "added_p50_ms_c1": results[1][name]["p50_ms"] - results[1]["direct"]["p50_ms"],
            "over_keel_p50_ms_c1": results[1][name]["p50_ms"] - keel1["p50_ms"],
            "rps_c16": results[16][name]["rps"],
            "p99_ms_c16": results[16][name]["p99_ms"],
        }
        print(f"{name}: adds {summary[name]['added_p50_ms_c1']:.3f} ms at p50 (c=1) over direct, "
              f"{summary[name]['over_keel_p50_ms_c1']:+.3f} ms over plain Keel; "
              f"{summary[name]['rps_c16']:.0f} req/s at c=16, p99 "
              f"{summary[name]['p99_ms_c16']:.2f} ms.")
    print(f"Keel adds {summary['added_p50_ms_c1']:.3f} ms at p50 (c=1), target <= 1 ms; "
          f"serves {summary['keel_rps_c16']:.0f} req/s at c=16, target >= 1500; "
          f"p99 at c=16 {summary['keel_p99_ms_c16']:.2f} ms against the pass-through's "
          f"{summary['bare_p99_ms_c16']:.2f} ({summary['p99_ratio_c16']:.2f}x), target <= 2x.")
    print(f"Traces: {traces['written']} written, {traces['dropped']} dropped, "
          f"{traces['errors']} errors, {traces['pending']} pending.")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "overhead.json").write_text(json.dumps({"results": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
