"""The `local` embedder: all-MiniLM-L6-v2 (int8 ONNX) in-process, offline, no PyTorch.

The model runs on one worker thread of its own, so the event loop never waits on it and calls
never contend for the cores onnxruntime already spreads one batch over. A call is cut into
batches that queue on that thread one by one, so a short query (semantic cache, retrieval)
waits for at most one batch of a long ingest, not all of it. Texts are sorted by length
before batching, so a batch pads to similar lengths, and the vectors come back in input order.

Usage tokens are the WordPiece tokens the model saw, after truncation, without [CLS]/[SEP].
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
from pydantic import Field

from keel.embeddings.base import EmbedderOptions, Embeddings
from keel.embeddings.minilm import POOLING, MiniLM


class LocalOptions(EmbedderOptions):
    batch_size: int = Field(32, ge=1, le=1024, description="texts per onnxruntime run")
    max_tokens: int = Field(
        256, ge=8, le=512, description="longer texts are truncated (MiniLM was trained on 256)"
    )
    threads: int | None = Field(
        None, ge=1, description="onnxruntime intra-op threads; default: one per physical core"
    )
    spin: bool = Field(
        False, description="let idle onnxruntime threads spin: a little faster on idle cores"
    )


class LocalEmbedder:
    kind: ClassVar[str] = "local"
    Options: ClassVar[type[EmbedderOptions]] = LocalOptions

    def __init__(self, name: str, options: LocalOptions) -> None:
        self.name = name
        self.options = options
        self.dim = 0
        self.fingerprint = ""
        self._model: MiniLM | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._model is not None:
                return
            self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"keel-embed-{self.name}")
            # Loading hashes a 23 MB file and builds the session: tens of ms, off the loop.
            opts = self.options
            model = await self._call(MiniLM, opts.max_tokens, opts.threads, opts.spin)
            self.dim = model.dim
            self.fingerprint = fingerprint(model)
            self._model = model

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None
        self._model = None

    async def embed(self, texts: list[str]) -> Embeddings:
        if self._model is None:
            await self.start()
        model = self._model
        if not texts:
            return Embeddings(np.zeros((0, self.dim), dtype=np.float32), 0)
        token_ids = await self._call(model.tokenize, list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        size = self.options.batch_size
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            batch = model.pad([token_ids[i] for i in rows])
            vectors[rows] = await self._call(model.run, batch)
        tokens = sum(max(len(ids) - 2, 0) for ids in token_ids)
        return Embeddings(vectors, tokens)

    async def _call(self, fn, *args):
        if self._worker is None:
            raise RuntimeError(f"embedder {self.name!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)


def fingerprint(model: MiniLM) -> str:
    """Changes whenever a vector could: model file, tokenizer, pooling, truncation."""
    recipe = "|".join(
        [model.model_sha256, model.tokenizer_sha256, POOLING, f"max_tokens={model.max_tokens}"]
    )
    return "minilm-l6-int8:" + hashlib.sha256(recipe.encode()).hexdigest()[:10]
