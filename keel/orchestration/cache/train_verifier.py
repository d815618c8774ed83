"""Train the semantic cache's verifier on labelled question pairs.

    python -m keel.orchestration.cache.train_verifier [--pairs bench/data/qqp-pairs-dev.jsonl] \\
        [--extra-pairs bench/data/qqp-pairs-train-extra.jsonl.gz|none] \\
        [--out keel/orchestration/cache/data/verifier.npz] [--report report.json] \\
        [--cache /tmp/qqp-embeddings.npz] [--precision 0.85] [--vectors] \\
        [--sample tests/data/cache/qqp-sample.jsonl]

Pairs: one JSON object a line, `{"a": ..., "b": ..., "duplicate": true|false}` (the default
file is 10,000 Quora Question Pairs, see bench/data/README.md for its licence). Each pair goes
to train / validation / test (60/20/20) by a hash of its two questions, so the split is the same
on every run and in bench/semantic_cache.py. `--extra-pairs` (.jsonl or .jsonl.gz; by default,
with the default --pairs, the 67,379 extra Quora pairs when the file is there) go to train only,
less any pair that shares a question with a validation or test pair. The model is fitted on
train only (logistic regressions over several L2 strengths and MLPs of 32 and 64 units with
three seeds, each without and with the IDF features, whose table comes from the train questions;
with `--vectors` also on the embeddings' |u−v| and u∘v, which needs the vectors at lookup); the
model, the verifier's threshold (the lowest whose precision on validation reaches `--precision`,
among candidates that pass `candidate_threshold`) and the candidate cosine are chosen on
validation, with the vetoes (verifier.veto) applied; the test split is only reported.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from keel.embeddings.heads import embed_all, fit_logistic, fit_mlp
from keel.orchestration.cache.verifier import (
    HAND_FEATURES,
    IDF_FEATURES,
    WEIGHTS,
    Verifier,
    idf_features,
    idf_table,
    model_inputs,
    pair_features,
    veto,
)

PAIRS = Path("bench/data/qqp-pairs-dev.jsonl")
# 67,379 more Quora pairs, for training only (bench/data/README.md): used by default with the
# default --pairs, when the file is there.
EXTRA_PAIRS = Path("bench/data/qqp-pairs-train-extra.jsonl.gz")
SPLITS = ("train", "validation", "test")
L2 = (0.1, 1.0, 10.0, 100.0)
HIDDEN = (32, 64)
MLP_SEEDS = (0, 1, 2)
# Pairs below this cosine are never verified: the verifier adds precision, it cannot add
# recall, and below it duplicates are rare (see docs/cache-verifier.md).
CANDIDATE_GRID = (0.6, 0.65, 0.7, 0.75, 0.8)


def split_of(a: str, b: str) -> str:
    """60/20/20 by a hash of the pair: stable across runs and machines."""
    bucket = int(hashlib.sha1(f"{a}\n{b}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < 0.2 else "validation" if bucket < 0.4 else "train"


def read_pairs(path: Path) -> list[dict]:
    """One JSON object a line; a .gz file is read through gzip."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_pairs(path: Path) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in read_pairs(path):
        splits[split_of(row["a"], row["b"])].append(row)
    return splits


def add_extra(splits: dict[str, list[dict]], path: Path) -> int:
    """Append the pairs of `path` to train, except any that share a question (exact string)
    with a validation or test pair, or repeat a pair already there: held-out questions are
    never trained on. Returns how many were added."""
    held_out = {r[k] for s in ("validation", "test") for r in splits[s] for k in ("a", "b")}
    known = {(r["a"], r["b"]) for rows in splits.values() for r in rows}
    added = 0
    for row in read_pairs(path):
        a, b = row["a"], row["b"]
        if a in held_out or b in held_out or (a, b) in known or (b, a) in known:
            continue
        known.add((a, b))
        splits["train"].append(row)
        added += 1
    return added


class PairSet:
    """A split's pairs with their vectors, cosines, text features and labels (`hand`: the
    HAND_FEATURES, then the IDF_FEATURES when an IDF table is given)."""

    def __init__(self, rows: list[dict], vectors: dict[str, np.ndarray],
                 idf: tuple[dict[str, float], float] | None = None) -> None:
        self.rows = rows
        dim = len(next(iter(vectors.values()))) if vectors else 384
        self.u = np.array([vectors[r["a"]] for r in rows], np.float32).reshape(-1, dim)
        self.v = np.array([vectors[r["b"]] for r in rows], np.float32).reshape(-1, dim)
        self.cosine = (self.u * self.v).sum(1)
        self.y = np.array([bool(r["duplicate"]) for r in rows])
        self.hand = np.array(
            [pair_features(r["a"], r["b"], c) for r, c in zip(rows, self.cosine)], np.float32
        ).reshape(-1, len(HAND_FEATURES))
        self.veto = np.array([veto(r["a"], r["b"]) is not None for r in rows], bool)
        if idf is not None:
            self.hand = self.with_idf(idf).hand

    def with_idf(self, idf: tuple[dict[str, float], float]) -> PairSet:
        """A copy whose text features add the IDF_FEATURES (on top of HAND_FEATURES only)."""
        out = copy.copy(self)
        extra = np.array([idf_features(r["a"], r["b"], *idf) for r in self.rows], np.float32)
        out.hand = np.hstack([self.hand[:, : len(HAND_FEATURES)],
                              extra.reshape(-1, len(IDF_FEATURES))])
        return out

    def inputs(self, vectors: bool) -> np.ndarray:
        return model_inputs(self.u, self.v, self.hand) if vectors else self.hand


def embed_pairs(splits: dict[str, list[dict]], cache: Path | None) -> tuple[dict, str]:
    texts = sorted({r[k] for rows in splits.values() for r in rows for k in ("a", "b")})
    vectors, fingerprint = embed_all(texts, cache)
    return dict(zip(texts, vectors)), fingerprint


def hits(pairs: PairSet, scores: np.ndarray, candidate: float, threshold: float):
    """Which pairs the cache would serve: cosine ≥ candidate, no veto, score ≥ threshold."""
    return (pairs.cosine >= candidate) & ~pairs.veto & (scores >= threshold)


def pr(y: np.ndarray, hit: np.ndarray) -> tuple[float, float]:
    tp = int((y & hit).sum())
    return (tp / int(hit.sum()) if hit.any() else 1.0), tp / max(int(y.sum()), 1)


def operating_point(pairs: PairSet, scores: np.ndarray, precision: float):
    """(candidate cosine, threshold, precision, recall) with the most recall whose precision
    reaches `precision` (and ≥ 5% recall: a handful of pairs proves nothing); when none does,
    the most precise point with ≥ 10% recall."""
    best, fallback = None, None
    for candidate in CANDIDATE_GRID:
        for threshold in np.round(np.arange(0.3, 0.991, 0.01), 2):
            p, r = pr(pairs.y, hits(pairs, scores, candidate, threshold))
            point = (candidate, float(threshold), p, r)
            if p >= precision and r >= 0.05 and (best is None or r > best[3]):
                best = point
            if r >= 0.1 and (fallback is None or p > fallback[2]):
                fallback = point
    return best or fallback


def candidates(train: PairSet, vectors: bool, fingerprint: str, idf=None):
    """(label, Verifier) to choose from on validation: logistic L2 strengths, MLP sizes and
    seeds."""
    x = train.inputs(vectors)
    mean, scale = x.mean(0).astype(np.float32), (x.std(0) + 1e-6).astype(np.float32)
    z, y = (x - mean) / scale, train.y.astype(float)
    for l2 in L2:
        w, b = fit_logistic(z, y, l2)
        yield f"logistic l2={l2}", Verifier(w, b, 0.5, 0.0, fingerprint, mean, scale, idf=idf)
    for hidden, seed in itertools.product(HIDDEN, MLP_SEEDS):
        w1, b1, w, b = fit_mlp(z, y, hidden, seed, weight_decay=1e-3)
        # Rounded as saved (float16), so that the figures are the saved file's.
        w1 = w1.astype(np.float16).astype(np.float32)
        yield f"mlp hidden={hidden} seed={seed}", Verifier(
            w, b, 0.5, 0.0, fingerprint, mean, scale, w1, b1, idf=idf
        )


def train_idf(rows: list[dict]) -> tuple[dict[str, float], float]:
    """The IDF table of the training questions, rounded as saved (float16)."""
    table, default = idf_table(sorted({r[k] for r in rows for k in ("a", "b")}))
    return {w: float(np.float16(v)) for w, v in table.items()}, default


def train(
    pairs: Path = PAIRS,
    cache: Path | None = None,
    precision: float = 0.85,
    vectors: bool = False,
    log=print,
    extra: Path | None = None,
) -> tuple[Verifier, dict]:
    splits = load_pairs(pairs)
    extra_added = add_extra(splits, extra) if extra is not None else 0
    embedded, fingerprint = embed_pairs(splits, cache)
    plain = {s: PairSet(rows, embedded) for s, rows in splits.items()}
    log("pairs: " + ", ".join(f"{s} {len(r)}" for s, r in splits.items())
        + (f" (train includes {extra_added} from {extra})" if extra is not None else ""))
    # IDF from the training questions only; the models with it are compared with those without.
    idf = train_idf(splits["train"])
    weighted = {s: ps.with_idf(idf) for s, ps in plain.items()}
    chosen = None
    for (use_idf, sets), use_vectors in itertools.product(
        ((False, plain), (True, weighted)), (False, True) if vectors else (False,)
    ):
        for label, model in candidates(sets["train"], use_vectors, fingerprint,
                                       idf if use_idf else None):
            scores = model.scores(sets["validation"].inputs(use_vectors))
            point = operating_point(sets["validation"], scores, precision)
            log(f"  idf={use_idf} vectors={use_vectors} {label}: validation cosine≥{point[0]} "
                f"score≥{point[1]:.2f} precision {point[2]:.3f} recall {point[3]:.3f}")
            key = (point[2] >= precision, point[3] if point[2] >= precision else point[2])
            if chosen is None or key > chosen[0]:
                chosen = (key, model, point, use_vectors, f"{label}{' +idf' if use_idf else ''}")
    _, model, (candidate, threshold, _, _), use_vectors, label = chosen
    model.threshold, model.candidate_threshold = threshold, candidate
    sets = weighted if model.idf is not None else plain
    report = {
        "pairs": str(pairs),
        "extra_pairs": str(extra) if extra is not None else None,
        "extra_pairs_used": extra_added,
        "fingerprint": fingerprint,
        "model": label,
        "inputs": "vectors+hand" if use_vectors else "hand",
        "features": list(HAND_FEATURES) + (list(IDF_FEATURES) if model.idf else []),
        "idf_words": len(model.idf[0]) if model.idf else 0,
        "target_precision": precision,
        "threshold": threshold,
        "candidate_threshold": candidate,
        "splits": {s: len(r) for s, r in splits.items()},
    }
    for s in ("validation", "test"):
        ps = sets[s]
        scores = model.scores(ps.inputs(use_vectors))
        p, r = pr(ps.y, hits(ps, scores, candidate, threshold))
        pc, rc = pr(ps.y, ps.cosine >= candidate)
        report[s] = {
            "verifier": {"precision": round(p, 4), "recall": round(r, 4)},
            "cosine_alone_at_candidate": {"precision": round(pc, 4), "recall": round(rc, 4)},
        }
    model.meta = report
    return model, {**report, "sets": sets}


def write_sample(rows: list[dict], path: Path, size: int = 300) -> None:
    """A fixed sample of the test split for the tests (the first `size` by hash)."""
    key = lambda r: hashlib.sha1(f"{r['a']}\n{r['b']}".encode()).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in sorted(rows, key=key)[:size]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument(
        "--extra-pairs", default=None, metavar="PATH",
        help="more pairs (.jsonl or .jsonl.gz) for TRAINING only; any sharing a question with "
             "a validation or test pair is dropped. Default: bench/data/"
             "qqp-pairs-train-extra.jsonl.gz with the default --pairs (when present); "
             "'none' for none")
    parser.add_argument("--report", type=Path, help="write the metrics as JSON here")
    parser.add_argument("--cache", type=Path, help="embeddings cache file (.npz)")
    parser.add_argument("--precision", type=float, default=0.85,
                        help="precision on validation the threshold must reach (default 0.85)")
    parser.add_argument("--vectors", action="store_true",
                        help="also try models on the embeddings' |u−v| and u∘v")
    parser.add_argument("--sample", type=Path, help="write a sample of the test split here")
    args = parser.parse_args(argv)
    if args.extra_pairs is None:
        extra = EXTRA_PAIRS if args.pairs == PAIRS and EXTRA_PAIRS.is_file() else None
    else:
        extra = None if args.extra_pairs.lower() in ("", "none") else Path(args.extra_pairs)
    model, report = train(args.pairs, args.cache, args.precision, args.vectors, extra=extra)
    sets = report.pop("sets")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(json.dumps(report, indent=2))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.sample:
        write_sample(sets["test"].rows, args.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
