"""Small numpy helpers every embedder and the endpoint share: unit rows, shortened vectors."""

from __future__ import annotations

import numpy as np


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1, as float32. A zero row stays zero rather than turning
    into NaNs: callers compare with dot products, where it then simply matches nothing."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def shorten(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` components, re-normalised: OpenAI's `dimensions` parameter.
    Meaningful for Matryoshka-trained models (text-embedding-3-*); for others it is a lossy
    projection, still self-consistent as long as both sides of a comparison use it."""
    if dimensions >= vectors.shape[1]:
        return vectors
    return l2_normalise(vectors[:, :dimensions])
