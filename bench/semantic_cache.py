"""Semantic cache quality and lookup latency: cosine alone against cosine + the verifier.

    python bench/semantic_cache.py [--pairs bench/data/qqp-pairs-dev.jsonl] [--cache emb.npz] \\
        [--entries 100000] [--queries 300] [--out bench/results/semantic_cache.json] \\
        [--chart docs/images/semantic-cache-pr.png]

Quality: the TEST split of the labelled Quora pairs (keel.orchestration.cache.train_verifier's
hash split; the verifier never saw it): store question `a`, look up question `b`. A hit on a
duplicate is a true hit, on a non-duplicate (hard negatives on the same topic) a false hit.
Precision = true hits / hits, recall = true hits / duplicates, across thresholds: for cosine
alone the cosine threshold, for the verifier its score threshold (candidates at cosine ≥ its
`candidate_threshold`, vetoes applied). The chart (matplotlib, a bench-only dependency) draws
both curves and the issue's goal (precision ≥ 95% at recall ≥ 40%).

Latency: an ExactIndex of `--entries` unit vectors (the test split's real questions plus random
unit vectors), then per query: embed it with the embedded MiniLM, search the top candidate,
verify it; p50/p95 of the whole, and of each part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keel.embeddings.local import LocalEmbedder, LocalOptions
from keel.orchestration.cache import train_verifier as tv
from keel.orchestration.cache.verifier import load_verifier
from keel.store.vectors import ExactIndex

GOAL_PRECISION, GOAL_RECALL = 0.95, 0.40


def curve(y: np.ndarray, hit_at) -> list[dict]:
    """(threshold, precision, recall, hits) for each threshold on a 0.01 grid."""
    out = []
    for t in np.round(np.arange(0.0, 1.0, 0.01), 2):
        hit = hit_at(t)
        p, r = tv.pr(y, hit)
        out.append({"threshold": float(t), "precision": round(p, 4), "recall": round(r, 4),
                    "hits": int(hit.sum())})
    return out


def precision_at_recall(points: list[dict], recall: float) -> float | None:
    ok = [p["precision"] for p in points if p["recall"] >= recall and p["hits"]]
    return max(ok) if ok else None


def recall_at_precision(points: list[dict], precision: float) -> float | None:
    # At least 20 hits: a point of 3 hits at 100% proves nothing.
    ok = [p["recall"] for p in points if p["precision"] >= precision and p["hits"] >= 20]
    return max(ok) if ok else None


def quality(pairs: tv.PairSet, verifier) -> dict:
    scores = verifier.scores(pairs.inputs(verifier.uses_vectors))
    cosine = curve(pairs.y, lambda t: pairs.cosine >= t)
    verified = curve(pairs.y, lambda t: tv.hits(pairs, scores, verifier.candidate_threshold, t))
    shipped = tv.pr(pairs.y, tv.hits(pairs, scores, verifier.candidate_threshold,
                                     verifier.threshold))
    summary = {}
    for name, points in (("cosine", cosine), ("verifier", verified)):
        summary[name] = {
            **{f"precision_at_recall_{int(r * 100)}": precision_at_recall(points, r)
               for r in (0.2, 0.3, 0.4, 0.5)},
            **{f"recall_at_precision_{int(p * 100)}": recall_at_precision(points, p)
               for p in (0.85, 0.9, 0.95)},
        }
    return {
        "pairs": len(pairs.y),
        "duplicates": int(pairs.y.sum()),
        "summary": summary,
        "shipped_operating_point": {
            "candidate_threshold": verifier.candidate_threshold,
            "threshold": verifier.threshold,
            "precision": round(shipped[0], 4),
            "recall": round(shipped[1], 4),
        },
        "goal_met": bool((recall_at_precision(verified, GOAL_PRECISION) or 0) >= GOAL_RECALL),
        "curves": {"cosine": cosine, "verifier": verified},
    }


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for name, label, style in (
        ("cosine", "cosine alone (MiniLM)", "-"),
        ("verifier", "cosine ≥ candidate + verifier", "-"),
    ):
        pts = [p for p in result["curves"][name] if p["hits"] >= 20]
        ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], style, label=label)
    op = result["shipped_operating_point"]
    ax.plot([op["recall"]], [op["precision"]], "o", color="C1",
            label=f"shipped threshold ({op['precision']:.0%} at {op['recall']:.0%})")
    ax.fill_between([GOAL_RECALL, 1.0], GOAL_PRECISION, 1.0, color="C2", alpha=0.15,
                    label="goal: precision ≥ 95%, recall ≥ 40%")
    ax.set_xlabel("recall (duplicates served from cache)")
    ax.set_ylabel("precision (hits that were duplicates)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.3, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Semantic cache on Quora pairs (test split, {result['pairs']} pairs)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


async def latency(real: np.ndarray, stored: list[str], questions: list[str], entries: int,
                  queries: int, verifier) -> dict:
    """`real`: the vectors of the `stored` questions; `questions`: what is looked up."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((max(entries - len(real), 0), real.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    matrix = np.vstack([real, noise])[:entries]
    index = ExactIndex(np.arange(len(matrix), dtype=np.int64), matrix)
    embedder = LocalEmbedder("minilm", LocalOptions())
    await embedder.start()
    verifier.check_embedder(embedder.fingerprint)
    parts: dict[str, list[float]] = {"embed": [], "search": [], "verify": [], "total": []}
    try:
        for i in range(queries + 10):
            query = questions[i % len(questions)]
            t0 = time.perf_counter()
            vector = (await embedder.embed([query])).vectors[0]
            t1 = time.perf_counter()
            (best, similarity), = index.search(vector, 1)
            t2 = time.perf_counter()
            # The verifier reads the cached question's text, kept beside its vector.
            cached = stored[best] if best < len(stored) else query + " ?"
            verifier.accept(query, cached, similarity, query_vector=vector,
                            cached_vector=index.matrix[best])
            t3 = time.perf_counter()
            if i >= 10:  # warm-up
                for name, ms in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    parts[name].append(ms * 1000)
    finally:
        await embedder.aclose()
    return {
        "entries": len(matrix),
        "queries": queries,
        **{f"{name}_ms": {"p50": round(float(np.percentile(v, 50)), 3),
                          "p95": round(float(np.percentile(v, 95)), 3)}
           for name, v in parts.items()},
    }


def print_table(result: dict) -> None:
    s = result["summary"]
    print(f"test split: {result['pairs']} pairs, {result['duplicates']} duplicates")
    print(f"{'':38}{'cosine alone':>14}{'+ verifier':>12}")
    for key in s["cosine"]:
        c, v = s["cosine"][key], s["verifier"][key]
        fmt = lambda x: "—" if x is None else f"{x:.1%}"
        print(f"{key.replace('_', ' '):38}{fmt(c):>14}{fmt(v):>12}")
    op = result["shipped_operating_point"]
    print(f"shipped threshold (cosine ≥ {op['candidate_threshold']}, score ≥ {op['threshold']}):"
          f" precision {op['precision']:.1%}, recall {op['recall']:.1%}")
    print(f"goal (precision ≥ 95% at recall ≥ 40%) met: {result['goal_met']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=tv.PAIRS)
    parser.add_argument("--cache", type=Path, help="embeddings cache file (.npz)")
    parser.add_argument("--weights", type=Path, help="verifier weights (default: shipped)")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench/results/semantic_cache.json"))
    parser.add_argument("--chart", type=Path, default=Path("docs/images/semantic-cache-pr.png"))
    args = parser.parse_args(argv)

    verifier = load_verifier(args.weights)
    test = {"test": tv.load_pairs(args.pairs)["test"]}
    embedded, fingerprint = tv.embed_pairs(test, args.cache)
    verifier.check_embedder(fingerprint)
    pairs = tv.PairSet(test["test"], embedded, verifier.idf)
    result = quality(pairs, verifier)
    print_table(result)
    try:
        chart(result, args.chart)
        result["chart"] = str(args.chart)
        print(f"chart: {args.chart}")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")

    questions = [r["a"] for r in test["test"]]
    real = np.stack([embedded[q] for q in questions])
    lat = asyncio.run(latency(real, questions, [r["b"] for r in test["test"]], args.entries,
                              args.queries, verifier))
    print(f"lookup at {lat['entries']:,} entries: " + ", ".join(
        f"{k[:-3]} p50 {v['p50']:.2f} ms (p95 {v['p95']:.2f})"
        for k, v in lat.items() if k.endswith("_ms")))
    result["latency"] = lat
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform()}
    result["verifier"] = {k: verifier.meta.get(k) for k in
                          ("model", "inputs", "threshold", "candidate_threshold", "fingerprint")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
