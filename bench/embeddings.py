"""Speed of the `local` embedder (MiniLM-L6 int8 on onnxruntime) and of POST /v1/embeddings.

Measures, on real questions (Quora pairs from bench/data/):
one query at a time through `LocalEmbedder.embed` (p50/p95/p99), the same query through the
HTTP endpoint of an in-process Keel on loopback, and batched throughput (sentences/s) at several
batch sizes. Prints a table and writes bench/results/embeddings.json.

    python bench/embeddings.py [--queries 300] [--sentences 2000] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from rich.console import Console
from rich.table import Table

from keel.embeddings.local import LocalEmbedder, LocalOptions

RESULTS = Path(__file__).parent / "results" / "embeddings.json"
QQP = Path(__file__).resolve().parent / "data" / "qqp-pairs-dev.jsonl"


def sentences(count: int) -> list[str]:
    found = []
    for line in QQP.read_text().splitlines():  # kept in the repo: a missing file is an error
        pair = json.loads(line)
        found += [pair["a"], pair["b"]]
        if len(found) >= count:
            break
    return found[:count]


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "n": len(samples)}


async def single_queries(embedder: LocalEmbedder, queries: list[str]) -> dict:
    for q in queries[:20]:
        await embedder.embed([q])
    samples = []
    for q in queries:
        t0 = time.perf_counter()
        await embedder.embed([q])
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


async def over_http(queries: list[str], tmp: Path, threads: int | None) -> dict:
    from keel.api import create_app
    from keel.api.embeddings import add_routes
    from keel.config import EmbedderConfig, KeelConfig, TracingConfig
    from keel.gateway import Gateway

    options = {"threads": threads} if threads else {}
    config = KeelConfig(
        state_dir=tmp,
        tracing=TracingConfig(record_bodies=False),
        embedders={"minilm": EmbedderConfig(kind="local", **options)},
    )
    app = create_app(Gateway(config))
    if not any(r.resource.canonical == "/v1/embeddings" for r in app.router.routes()):
        add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/v1/embeddings"))
    samples = []
    async with aiohttp.ClientSession() as session:
        for i, q in enumerate([*queries[:20], *queries]):
            t0 = time.perf_counter()
            async with session.post(url, json={"model": "minilm", "input": q}) as r:
                await r.read()
                assert r.status == 200
            if i >= 20:
                samples.append(time.perf_counter() - t0)
    await server.close()
    return percentiles(samples)


async def throughput(threads: int | None, texts: list[str], batch_size: int) -> dict:
    embedder = LocalEmbedder("bench", LocalOptions(batch_size=batch_size, threads=threads))
    await embedder.start()
    await embedder.embed(texts[:batch_size])
    t0 = time.perf_counter()
    result = await embedder.embed(texts)
    elapsed = time.perf_counter() - t0
    await embedder.aclose()
    return {
        "sentences_per_s": len(texts) / elapsed,
        "tokens_per_s": result.tokens / elapsed,
        "n": len(texts),
    }


async def main(args) -> dict:
    load_before = os.getloadavg()[0]
    texts = sentences(max(args.sentences, args.queries))
    queries = texts[: args.queries]
    embedder = LocalEmbedder("bench", LocalOptions(threads=args.threads))
    t0 = time.perf_counter()
    await embedder.start()
    load_ms = (time.perf_counter() - t0) * 1000
    single = await single_queries(embedder, queries)
    await embedder.aclose()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "keel-bench-embeddings"
    http = await over_http(queries, tmp, args.threads)
    batched = {
        str(size): await throughput(args.threads, texts[: args.sentences], size)
        for size in (1, 8, 32, 64, 128)
    }
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "threads": args.threads or "onnxruntime default",
        "load_ms": load_ms,
        "fingerprint": embedder.fingerprint,
        "single_query": single,
        "single_query_http": http,
        "batched": batched,
        "corpus": "Quora question pairs",
        # The machine may be shared: a high load average means noisy figures.
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


def report(result: dict) -> None:
    console = Console(width=110)
    table = Table(title=f"local embedder (MiniLM-L6 int8), {result['machine']}")
    for column in ("measure", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    for label, key in (("one query, embed()", "single_query"),
                       ("one query, POST /v1/embeddings", "single_query_http")):
        r = result[key]
        table.add_row(label, f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}")
    console.print(table)
    batched = Table(title=f"batched throughput ({result['batched']['32']['n']} sentences)")
    for column in ("batch_size", "sentences/s", "tokens/s"):
        batched.add_column(column, justify="right")
    for size, r in result["batched"].items():
        batched.add_row(size, f"{r['sentences_per_s']:.0f}", f"{r['tokens_per_s']:.0f}")
    console.print(batched)
    before, after = result["load_average_1m"]
    console.print(f"model load: {result['load_ms']:.0f} ms; corpus: {result['corpus']}; "
                  f"machine load average {before:.1f} → {after:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    result = asyncio.run(main(parser.parse_args()))
    report(result)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
