"""The `fake` embedder: deterministic, model-free, shared words mean closer vectors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np

from keel.embeddings.fake import FakeEmbedder, FakeOptions


async def test_deterministic_normalised_and_word_sensitive():
    embedder = FakeEmbedder("fake", FakeOptions())
    await embedder.start()
    texts = ["Reset my password please", "reset MY password", "weather in Paris", ""]
    first = await embedder.embed(texts)
    second = await embedder.embed(texts)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert first.vectors.shape == (4, 64) and first.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-6)
    v = first.vectors
    assert v[0] @ v[1] > v[0] @ v[2]
    assert first.tokens == 4 + 3 + 3
    assert embedder.fingerprint == "fake:64" and embedder.dim == 64


async def test_dim_option():
    embedder = FakeEmbedder("fake", FakeOptions(dim=16))
    assert (await embedder.embed(["a b"])).vectors.shape == (1, 16)
    assert embedder.fingerprint == "fake:16"


def test_same_vectors_in_another_process():
    code = (
        "import asyncio; from keel.embeddings.fake import FakeEmbedder, FakeOptions;"
        "e = FakeEmbedder('f', FakeOptions());"
        "import json; print(json.dumps(asyncio.run(e.embed(['hello keel world'])).vectors[0].tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    embedder = FakeEmbedder("f", FakeOptions())
    here = asyncio.run(embedder.embed(["hello keel world"])).vectors[0]
    np.testing.assert_array_equal(np.array(json.loads(out.stdout), dtype=np.float32), here)
