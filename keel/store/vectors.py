"""Vector search behind the `VectorIndex` protocol; the default is exact, in numpy.

A collection's vectors (float32 blobs in the store) are loaded once into one matrix and kept in
memory for as long as the collection's version stays the same: a search is then one
matrix-vector product (~9 ms at 100k × 384) and an argpartition. Any change to the collection
changes its version, and the next search reloads. The approximate index (HNSW, usearch) in
ann.py implements the same two methods; pgvector could too.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class VectorIndex(Protocol):
    def __len__(self) -> int: ...

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine) best first; only ids in `allowed` when it is given."""
        ...

    def similarities(self, query: np.ndarray, ids: list[int]) -> dict[int, float]:
        """The cosine of the query with each of these chunks (ids the index lacks: left out);
        hybrid search uses it to score the candidates only full text found."""
        ...


class ExactIndex:
    """Brute-force cosine over unit vectors: exact, and fast enough to ~10^6 rows."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
            order = np.argsort(ids, kind="stable")
            ids, matrix = ids[order], matrix[order]
        self.ids = ids
        self.matrix = matrix

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query, k, allowed=None):
        if not len(self.ids) or k <= 0:
            return []
        scores = self.matrix @ np.asarray(query, dtype=np.float32)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, allowed), scores, -np.inf)
        return top_k(self.ids, scores, k)

    def rows(self, ids) -> np.ndarray:
        """The matrix rows of these chunk ids, in their order; ids the index lacks: left out."""
        if not len(self.ids):
            return np.zeros(0, dtype=np.int64)
        wanted = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, wanted)  # ids are stored in ascending order
        rows = np.minimum(rows, len(self.ids) - 1)
        return rows[self.ids[rows] == wanted]

    def similarities(self, query, ids):
        if not len(self.ids) or not len(ids):
            return {}
        rows = self.rows(ids)
        scores = self.matrix[rows] @ np.asarray(query, dtype=np.float32)
        return {int(cid): float(s) for cid, s in zip(self.ids[rows], scores)}


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k best (id, score) pairs, best first; -inf scores (filtered out) are dropped."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]


class IndexCache:
    """The loaded index of each collection, keyed by (collection id, version)."""

    def __init__(self) -> None:
        self._indexes: dict[int, tuple[str, VectorIndex]] = {}
        self._lock = threading.Lock()

    def get(self, collection_id: int, version: str, load) -> VectorIndex:
        """The index for this version; `load()` builds it when the cached one is stale."""
        cached = self._indexes.get(collection_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:  # one load at a time, not one per concurrent search
            cached = self._indexes.get(collection_id)
            if cached is None or cached[0] != version:
                cached = (version, load())
                self._indexes[collection_id] = cached
        return cached[1]

    def drop(self, collection_id: int) -> None:
        self._indexes.pop(collection_id, None)
