"""An approximate vector index: an HNSW graph (usearch) over a collection's unit vectors.

Optional (`pip install 'keel-llm[ann]'`) and chosen by `KnowledgeBase(index=...)`:

    exact   brute force in numpy (vectors.py), the default
    ann     this graph, for every collection
    auto    this graph for collections of `ANN_THRESHOLD` chunks or more when usearch is
            installed, exact below that or without it

Built from the same matrix as the exact index when a collection's vectors are loaded, and
cached with it per collection version; the matrix is kept (the graph only points into it), so
`similarities` and the scores returned are exact cosines, and only the choice of candidates is
approximate.

Filters: usearch has no predicate search in Python, so a search with `allowed` ids oversamples
the graph (k ÷ the share of chunks allowed, × `OVERSAMPLE`) and keeps the allowed; when that
leaves fewer than k, or when the filter allows under `EXACT_SHARE` of the collection (where
exact over just those rows is cheap anyway), it searches the allowed rows exactly.

Recall depends on the vectors: on real embeddings (clustered, low intrinsic dimension) the graph
finds ~all of the exact top 10; on uniformly random 384-d vectors, which have no near
neighbours to find, it finds few of them. Building costs about a minute per 100k × 384 vectors
on two cores, paid by the first search after each change to the collection.
"""

from __future__ import annotations

import math

import numpy as np

from keel.errors import ConfigError
from keel.store.vectors import ExactIndex, VectorIndex, top_k

INDEXES = ("exact", "ann", "auto")
ANN_THRESHOLD = 50_000  # chunks; "auto" builds the graph from here up
CONNECTIVITY = 16  # graph edges per node
EXPANSION_ADD = 128  # candidate list while building: better graph, slower build
EXPANSION_SEARCH = 128  # candidate list while searching: better recall, slower search
OVERSAMPLE = 2.0
EXACT_SHARE = 0.1


def available() -> bool:
    _load_onnxruntime_first()
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


def _load_onnxruntime_first() -> None:
    # onnxruntime (the embedded embedder) crashes the process with a segmentation fault when it
    # is imported after usearch (its numkong extension; onnxruntime 1.32, usearch 2.26): found
    # when knowledge tests ran before the embeddings API's. Imported first, both work.
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass


def require() -> None:
    if not available():
        raise ConfigError(
            "the approximate vector index (index: ann) needs usearch: "
            "pip install 'keel-llm[ann]'"
        )


def build_index(kind: str, ids: np.ndarray, matrix: np.ndarray,
                threshold: int = ANN_THRESHOLD) -> VectorIndex:
    """The index `kind` ("exact", "ann" or "auto") asks for, over these vectors."""
    if kind == "ann" or (kind == "auto" and len(ids) >= threshold and available()):
        return AnnIndex(ids, matrix)
    return ExactIndex(ids, matrix)


class AnnIndex:
    """HNSW (cosine) candidates, rescored exactly against the kept matrix."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray, *, threads: int = 0) -> None:
        require()  # which loads onnxruntime before usearch (see _load_onnxruntime_first)
        from usearch.index import Index

        self.exact = ExactIndex(ids, matrix)  # ids ascending; the rows the graph points into
        self.graph = Index(ndim=matrix.shape[1], metric="cos",
                           dtype="f32", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD,
                           expansion_search=EXPANSION_SEARCH)
        if len(ids):
            self.graph.add(self.exact.ids, self.exact.matrix, copy=False, threads=threads)

    def __len__(self) -> int:
        return len(self.exact)

    def search(self, query, k, allowed=None):
        if not len(self) or k <= 0:
            return []
        query = np.asarray(query, dtype=np.float32)
        if allowed is None:
            return self._candidates(query, k)
        allowed = np.asarray(allowed, dtype=np.int64)
        share = len(allowed) / len(self)
        if share >= EXACT_SHARE:
            keep = set(allowed.tolist())
            count = min(len(self), math.ceil(k / share * OVERSAMPLE))
            hits = [hit for hit in self._candidates(query, count) if hit[0] in keep]
            if len(hits) >= k:
                return hits[:k]
        rows = self.exact.rows(allowed)
        return top_k(self.exact.ids[rows], self.exact.matrix[rows] @ query, k)

    def _candidates(self, query: np.ndarray, count: int) -> list[tuple[int, float]]:
        """The graph's `count` nearest, with exact cosines, best first."""
        keys = self.graph.search(query, count).keys.astype(np.int64)
        rows = self.exact.rows(keys)
        return top_k(self.exact.ids[rows], self.exact.matrix[rows] @ query, count)

    def similarities(self, query, ids):
        return self.exact.similarities(query, ids)
