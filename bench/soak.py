"""Soak: Keel under sustained mixed load for minutes; memory, descriptors and tasks must stay flat.

Starts `keel fake-upstream` and Keel (the `openai` provider pointed at it, the default pipeline
with `json_mode`, tracing on into SQLite) as separate processes, then keeps `--concurrency`
clients sending back to back for `--duration` seconds: a closed loop, so the rate is the highest
Keel sustains on this machine. The mix, fixed by `--seed`:

    35%  plain answer                       model echo
    15%  JSON mode, valid at once           model json, response_format json_object
    10%  JSON mode, repaired once           model repair (bad JSON on odd upstream calls; when
                                            concurrent calls interleave, the repair can get bad
                                            JSON too, and Keel's 502 invalid_json_output is a
                                            correct answer)
    30%  stream, read to the end            model echo, stream: true
    10%  stream, client disconnects         model slow (20 ms per word): the client drops the
                                            connection after the first content chunk

Every `--sample-every` seconds it records Keel's RSS and open file descriptors (from /proc) and
its asyncio task count and trace-writer counters (from a stats route the benchmark adds to its own
Keel process). After the run it stops Keel (which flushes its traces) and counts the rows in the
trace store against the requests sent. Prints a table and writes bench/results/soak.json.

Pass criteria (after `--warmup` seconds): RSS never more than 5% above its first post-warm-up
sample; descriptors and tasks flat (the second half's peak at most a few descriptors, or one task
per client, above the first half's); tasks back to their idle count after the run;
every request sent has a trace, none dropped, none failed.

    python bench/soak.py [--duration 600] [--warmup 60] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from processes import free_port, wait_ready  # bench/processes.py, beside this script

HERE = Path(__file__).resolve().parent
STATS_PATH = "/_soak/stats"
FLAT_SLACK = 4  # descriptors the second half's peak may exceed the first half's by
# Tasks come and go with the requests in flight (a handler, its upstream call): a sample catches
# anywhere between none and a few per client, so a leak shows as growth beyond that.
TASKS_SLACK_PER_CLIENT = 1
RSS_LIMIT = 1.05

KEEL_CONFIG = """
state_dir: {state}
providers:
  upstream: {{kind: openai, base_url: "http://127.0.0.1:{upstream}/v1"}}
models:
  echo: {{provider: upstream, model: echo}}
  json: {{provider: upstream, model: json}}
  repair: {{provider: upstream, model: bad-json-once}}
  slow: {{provider: upstream, model: slow-20}}
pipeline: [json_mode]
tracing: {{enabled: true}}
"""

PROMPT = ("Tell me about the history of the city of Paris, its bridges, its river, its museums "
          "and the people who built them over the centuries, in a few sentences please.")
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": PROMPT}]
KINDS = (  # (name, share, body)
    ("plain", 35, {"model": "echo", "messages": MESSAGES, "max_tokens": 64}),
    ("json", 15, {"model": "json", "messages": MESSAGES,
                  "response_format": {"type": "json_object"}}),
    ("json repaired", 10, {"model": "repair", "messages": MESSAGES,
                           "response_format": {"type": "json_object"}}),
    ("stream", 30, {"model": "echo", "messages": MESSAGES, "max_tokens": 64, "stream": True}),
    ("stream, client leaves", 10, {"model": "slow", "messages": MESSAGES, "max_tokens": 64,
                                   "stream": True}),
)


# -- the Keel process (this file run with --keel-child) ------------------------------------------


def keel_child(config_path: str, port: int) -> None:
    """`keel serve`'s own code (`keel.api.server.serve`), plus a stats route only the benchmark
    has."""
    import uvloop
    from aiohttp import web

    from keel.api.server import serve
    from keel.config import load_config

    # Cyclic-GC collections per generation, what they freed and how long they held the GIL:
    # garbage left to the GC (reference cycles) shows here, and its pauses in the p99.
    collections = {g: {"count": 0, "collected": 0, "total_ms": 0.0, "max_ms": 0.0}
                   for g in range(3)}
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        c = collections[info["generation"]]
        c["count"] += 1
        c["collected"] += info["collected"]
        c["total_ms"] += ms
        c["max_ms"] = max(c["max_ms"], ms)

    gc.callbacks.append(on_gc)

    def add_stats(app: web.Application, gateway) -> None:
        async def stats(request: web.Request) -> web.Response:
            recorder = gateway.recorder
            if request.query.get("reset_gc"):  # start-up's own collections are not the soak's
                for c in collections.values():
                    c.update(count=0, collected=0, total_ms=0.0, max_ms=0.0)
            return web.json_response({
                "tasks": len(asyncio.all_tasks()) - 1,  # less this handler's own
                "threads": threading.active_count(),
                "gc_objects": len(gc.get_objects()) if request.query.get("objects") else None,
                "traces": recorder.stats() if recorder is not None else None,
                "gc": collections,
            })

        app.router.add_get(STATS_PATH, stats)

    config = load_config(config_path)
    config.server.host, config.server.port = "127.0.0.1", port
    uvloop.run(serve(config, announce=lambda line: None, extend=add_stats))


# -- the load ------------------------------------------------------------------------------------


class Load:
    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rng = random.Random(seed)
        self.names = [name for name, _, _ in KINDS]
        self.weights = [share for _, share, _ in KINDS]
        self.bodies = {name: json.dumps(body).encode() for name, _, body in KINDS}
        self.sent: Counter[str] = Counter()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # a 502 invalid_json_output: repair gave up
        self.latencies: list[float] = []
        self.stop = False

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while not self.stop:
            kind = self.rng.choices(self.names, self.weights)[0]
            self.sent[kind] += 1
            t0 = time.perf_counter()
            try:
                outcome = await self.one(session, kind)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                outcome = "failed"
            if outcome == "ok":
                self.ok[kind] += 1
                self.latencies.append(time.perf_counter() - t0)
            elif outcome == "refused":
                self.refused[kind] += 1
            else:
                self.failed[kind] += 1

    async def one(self, session: aiohttp.ClientSession, kind: str) -> str:
        async with session.post(self.url, data=self.bodies[kind],
                                headers={"Content-Type": "application/json"}) as r:
            if r.status != 200:
                body = await r.read()
                # The fake answers bad JSON on every odd call it gets, from any client: two
                # requests interleaving can make a repair fail too. Keel then answers 502.
                if r.status == 502 and b'"invalid_json_output"' in body:
                    return "refused"
                return "failed"
            if kind == "stream, client leaves":
                async for line in r.content:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        break
                r.close()  # drops the connection mid-stream: Keel must record a 499
                return "ok"
            data = await r.read()
            if kind.startswith("stream"):
                ok = data.rstrip().endswith(b"data: [DONE]")
            else:
                ok = b'"choices"' in data
            return "ok" if ok else "failed"


def proc_sample(pid: int) -> dict:
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def sample(session: aiohttp.ClientSession, base: str, pid: int, t0: float,
                 reset_gc: bool = False) -> dict:
    async with session.get(base + STATS_PATH + ("?reset_gc=1" if reset_gc else "")) as r:
        stats = await r.json()
    return {"t_s": round(time.monotonic() - t0, 1), **proc_sample(pid), "tasks": stats["tasks"],
            "threads": stats["threads"], "traces": stats["traces"], "gc": stats["gc"]}


async def soak(base: str, pid: int, opts) -> dict:
    load = Load(base + "/v1/chat/completions", opts.seed)
    samples: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as probe:
        idle_before = await sample(probe, base, pid, time.monotonic(), reset_gc=True)
        connector = aiohttp.TCPConnector(limit=opts.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            t0 = time.monotonic()
            workers = [asyncio.create_task(load.worker(session)) for _ in range(opts.concurrency)]
            last_sent = 0
            while time.monotonic() - t0 < opts.duration:
                await asyncio.sleep(min(opts.sample_every, opts.duration - (time.monotonic() - t0)))
                s = await sample(probe, base, pid, t0)
                total = sum(load.sent.values())
                s["rps"] = round((total - last_sent) / opts.sample_every, 1)
                last_sent = total
                samples.append(s)
                if opts.verbose:
                    print(s, flush=True)
            load.stop = True
            await asyncio.gather(*workers)
            elapsed = time.monotonic() - t0
        await asyncio.sleep(2)  # let the keep-alive and cancelled streams settle
        idle_after = await sample(probe, base, pid, t0)
    return {"load": load, "samples": samples, "elapsed_s": elapsed,
            "idle_before": idle_before, "idle_after": idle_after}


# -- the run -------------------------------------------------------------------------------------


def stored_traces(db: Path) -> dict[int, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM traces GROUP BY status"))


def verdict(run: dict, stored: dict[int, int], traces: dict, opts) -> dict:
    post = [s for s in run["samples"] if s["t_s"] > opts.warmup]
    if len(post) < 2:
        raise SystemExit("--duration must exceed --warmup by at least two --sample-every periods")
    half = len(post) // 2
    first, second = post[:half], post[half:]

    def growth(key: str) -> int:
        return max(s[key] for s in second) - max(s[key] for s in first)

    rss0 = post[0]["rss_mb"]
    rss_max = max(s["rss_mb"] for s in post)
    load: Load = run["load"]
    sent = sum(load.sent.values())
    stored_total = sum(stored.values())
    lat = sorted(load.latencies)
    figures = {
        "requests_sent": sent,
        "requests_ok": sum(load.ok.values()),
        "requests_failed": sum(load.failed.values()),
        "requests_refused": sum(load.refused.values()),
        "by_kind": {k: {"sent": load.sent[k], "ok": load.ok[k], "refused": load.refused[k],
                        "failed": load.failed[k]} for k, _, _ in KINDS},
        "rps": sent / run["elapsed_s"],
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "rss_mb_after_warmup": rss0,
        "rss_mb_max": rss_max,
        "rss_mb_last": post[-1]["rss_mb"],
        "rss_growth_pct": (rss_max / rss0 - 1) * 100,
        "fds_range": [min(s["fds"] for s in post), max(s["fds"] for s in post)],
        "fds_growth": growth("fds"),
        "tasks_range": [min(s["tasks"] for s in post), max(s["tasks"] for s in post)],
        "tasks_growth": growth("tasks"),
        "idle_before": {k: run["idle_before"][k] for k in ("rss_mb", "fds", "tasks", "threads")},
        "idle_after": {k: run["idle_after"][k] for k in ("rss_mb", "fds", "tasks", "threads")},
        "gc": run["samples"][-1]["gc"],
        "traces_stored": stored_total,
        "traces_by_status": stored,
        "traces_dropped": traces["dropped"],
        "traces_errors": traces["errors"],
        "traces_lost": sent - stored_total,
    }
    checks = {
        f"RSS within {RSS_LIMIT - 1:.0%} after warm-up": rss_max <= rss0 * RSS_LIMIT,
        "open descriptors flat": figures["fds_growth"] <= FLAT_SLACK,
        "asyncio tasks flat": figures["tasks_growth"] <= TASKS_SLACK_PER_CLIENT * opts.concurrency,
        "tasks back to idle after the run":
            run["idle_after"]["tasks"] <= run["idle_before"]["tasks"],
        "0 traces lost, dropped or failed":
            figures["traces_lost"] == 0 and not traces["dropped"] and not traces["errors"],
        "no request failed": figures["requests_failed"] == 0,
    }
    return {"figures": figures, "checks": checks}


def report(result: dict, samples: list[dict], opts) -> None:
    f, checks = result["figures"], result["checks"]
    table = Table(title=f"Soak: {opts.duration:.0f} s, concurrency {opts.concurrency}, "
                        f"{os.cpu_count()} cores (after {opts.warmup:.0f} s warm-up)")
    for col in ("t s", "req/s", "RSS MB", "fds", "tasks", "traces written", "pending", "dropped"):
        table.add_column(col, justify="right")
    step = max(1, len(samples) // 12)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        t = s["traces"]
        table.add_row(f"{s['t_s']:.0f}", f"{s['rps']:.0f}", f"{s['rss_mb']:.1f}", str(s["fds"]),
                      str(s["tasks"]), str(t["written"]), str(t["pending"]), str(t["dropped"]))
    console = Console()
    console.print(table)
    print(f"{f['requests_sent']} requests ({f['rps']:.0f}/s, p50 {f['p50_ms']:.1f} ms, "
          f"p99 {f['p99_ms']:.1f} ms), {f['requests_failed']} failed, "
          f"{f['requests_refused']} answered 502 invalid_json_output; "
          + ", ".join(f"{k} {v['sent']}" for k, v in f["by_kind"].items()))
    print(f"RSS {f['rss_mb_after_warmup']:.1f} MB after warm-up, max {f['rss_mb_max']:.1f} "
          f"({f['rss_growth_pct']:+.1f}%), last {f['rss_mb_last']:.1f}; fds {f['fds_range']}, "
          f"tasks {f['tasks_range']}; idle before {f['idle_before']}, after {f['idle_after']}")
    print("GC during the run: " + "; ".join(
        f"gen{g} {c['count']} collections, max {c['max_ms']:.1f} ms, {c['collected']} objects freed"
        for g, c in f["gc"].items()))
    print(f"Traces: {f['traces_stored']} stored for {f['requests_sent']} requests "
          f"(by status {f['traces_by_status']}), {f['traces_dropped']} dropped, "
          f"{f['traces_errors']} errors, {f['traces_lost']} lost")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (600)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the baseline sample (default: 10%% of duration, "
                             "at least 20)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", action="store_true", help="print each sample as it comes")
    parser.add_argument("--keel-child", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.keel_child:
        keel_child(opts.keel_child[0], int(opts.keel_child[1]))
        return
    if opts.warmup is None:
        opts.warmup = max(20.0, opts.duration * 0.1)
    workdir = Path(tempfile.mkdtemp(prefix="keel-soak-"))
    up, keel = free_port(), free_port()
    state = workdir / "state"
    (workdir / "keel.yaml").write_text(KEEL_CONFIG.format(state=state, upstream=up))
    py = sys.executable
    upstream = subprocess.Popen([py, "-m", "keel", "fake-upstream", "--port", str(up)],
                                cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=open(workdir / "upstream.log", "wb"))
    server = subprocess.Popen([py, str(Path(__file__).resolve()), "--keel-child", "keel.yaml",
                               str(keel)], cwd=workdir, stdout=subprocess.DEVNULL,
                              stderr=open(workdir / "keel.log", "wb"))
    base = f"http://127.0.0.1:{keel}"
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{up}/v1/models"))
        asyncio.run(wait_ready(base + "/readyz"))
        run = asyncio.run(soak(base, server.pid, opts))
        traces = run["idle_after"]["traces"]
    finally:
        server.send_signal(signal.SIGTERM)  # Keel flushes its pending traces on the way out
        server.wait(timeout=60)
        upstream.terminate()
        upstream.wait(timeout=20)
    stored = stored_traces(state / "keel.db")
    result = verdict(run, stored, traces, opts)
    report(result, run["samples"], opts)
    print(f"Logs: {workdir / 'keel.log'}, {workdir / 'upstream.log'}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "soak.json").write_text(json.dumps(
        {"options": {k: v for k, v in vars(opts).items() if k != "keel_child"},
         "cpu_count": os.cpu_count(), **result, "samples": run["samples"]}, indent=2))
    if not all(result["checks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
