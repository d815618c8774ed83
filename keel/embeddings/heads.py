"""Small classifiers on sentence embeddings: trained in numpy, scored in numpy, saved small.

Several parts of Keel put a learned yes/no on top of the embedded MiniLM — the prompt-injection
and moderation guards, the semantic cache's verifier, the learned router — each with a training
script of its own. What they share lives here, below the layers, so no layer imports another:

- `embed_all`: texts through the embedded MiniLM, in batches, optionally cached on disk keyed
  by the embedder's fingerprint (re-running a script with new settings then costs seconds).
- `fit_logistic`: L2-regularised logistic regression by Newton's method (a few hundred
  parameters, exact in ~10 iterations; no scikit-learn needed); `fit_mlp`: one hidden ReLU
  layer by Adam, when a linear head is not enough.
- `head_scores`, `head_arrays`, `head_from`: the probability a head gives, and its weights in and
  out of an .npz (the hidden layer as float16: half the size).
- `prf`, `best_threshold`: precision / recall / F1 and the threshold that maximises F1.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np


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


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: int = 128,
    seed: int = 0,
    epochs: int = 20,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    dropout: float = 0.1,
    batch: int = 128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(W1, b1, w, b) of p = sigmoid(w·relu(W1ᵀx + b1) + b), by Adam on the mean log-loss.

    Numpy only; a few seconds for 20k rows on two cores. Dropout on the hidden layer and a little
    weight decay keep it from memorising the training corpora's phrasings."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    x, y = x.astype(np.float32), y.astype(np.float32)
    # At least ~2,000 Adam steps, so that a small data set (your own, or a test's) converges too.
    epochs = max(epochs, -(-2000 // -(-n // batch)))
    params = [
        (rng.standard_normal((dim, hidden)) * np.sqrt(2 / dim)).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.standard_normal(hidden) * np.sqrt(1 / hidden)).astype(np.float32),
        np.zeros(1, np.float32),
    ]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for at in range(0, n, batch):
            idx = order[at : at + batch]
            xb, yb = x[idx], y[idx]
            w1, b1, w2, b2 = params
            h = xb @ w1 + b1
            keep = (rng.random(h.shape) > dropout) / (1 - dropout)
            a = np.maximum(h, 0) * keep
            g = (sigmoid(a @ w2 + b2[0]) - yb) / len(idx)
            ga = np.outer(g, w2) * keep * (h > 0)
            grads = [
                xb.T @ ga + weight_decay * w1,
                ga.sum(0),
                a.T @ g + weight_decay * w2,
                np.array([g.sum()], np.float32),
            ]
            step += 1
            for k, grad in enumerate(grads):
                m[k] = 0.9 * m[k] + 0.1 * grad
                v[k] = 0.999 * v[k] + 0.001 * grad**2
                m_hat = m[k] / (1 - 0.9**step)
                v_hat = v[k] / (1 - 0.999**step)
                params[k] = (params[k] - lr * m_hat / (np.sqrt(v_hat) + 1e-8)).astype(
                    np.float32
                )
    w1, b1, w2, b2 = params
    return w1, b1, w2, float(b2[0])


def head_scores(x: np.ndarray, w: np.ndarray, b: float, w1: np.ndarray | None = None,
                b1: np.ndarray | None = None) -> np.ndarray:
    """P(yes) for rows `x`: sigmoid(w·x + b), through relu(W1ᵀx + b1) first with a hidden layer."""
    if w1 is not None:
        x = np.maximum(x @ w1 + b1, 0.0)
    return sigmoid(x @ w + b)


def head_arrays(w: np.ndarray, b: float, w1: np.ndarray | None = None,
                b1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A head's weights for `np.savez_compressed`: the hidden layer as float16 (half the size;
    the training scripts round it so before judging it, so their figures are the saved file's)."""
    arrays = {"w": w.astype(np.float32), "b": np.float64(b)}
    if w1 is not None:
        arrays.update(w1=w1.astype(np.float16), b1=b1.astype(np.float32))
    return arrays


def head_from(saved) -> dict:
    """A head's weights (w, b, w1, b1) read back from an opened .npz."""
    return {
        "w": saved["w"].astype(np.float32),
        "b": float(saved["b"]),
        "w1": saved["w1"].astype(np.float32) if "w1" in saved else None,
        "b1": saved["b1"].astype(np.float32) if "b1" in saved else None,
    }
