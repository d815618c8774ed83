"""The `fake` embedder: deterministic vectors without a model, for tests and benchmarks.

Each lowercase word is hashed (blake2b, so the result is the same in every process, unlike
`hash()`) to a bucket and a sign; a text's vector is the normalised sum over its words. Texts
that share words therefore have a higher cosine than texts that do not, which is enough to
exercise a vector index, a semantic cache or retrieval without loading MiniLM.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import ClassVar

import numpy as np
from pydantic import Field

from keel.embeddings.base import EmbedderOptions, Embeddings
from keel.embeddings.vectors import l2_normalise

_WORD = re.compile(r"\w+")


class FakeOptions(EmbedderOptions):
    dim: int = Field(64, ge=2, le=4096)


class FakeEmbedder:
    kind: ClassVar[str] = "fake"
    Options: ClassVar[type[EmbedderOptions]] = FakeOptions

    def __init__(self, name: str, options: FakeOptions) -> None:
        self.name = name
        self.options = options
        self.dim = options.dim
        self.fingerprint = f"fake:{options.dim}"

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def embed(self, texts: list[str]) -> Embeddings:
        return embed_words(texts, self.dim)


def embed_words(texts: list[str], dim: int) -> Embeddings:
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    tokens = 0
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        tokens += len(words)
        for word in words or [""]:  # "" gives an empty text a vector of its own
            bucket, sign = _slot(word, dim)
            vectors[row, bucket] += sign
        if not vectors[row].any():  # words that cancelled out exactly
            vectors[row, _slot("", dim)[0]] = 1.0
    return Embeddings(l2_normalise(vectors), tokens)


@lru_cache(maxsize=65536)
def _slot(word: str, dim: int) -> tuple[int, float]:
    value = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    return (value >> 1) % dim, 1.0 if value & 1 else -1.0
