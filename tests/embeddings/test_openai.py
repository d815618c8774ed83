"""The `openai` embedder against a small OpenAI-shaped embeddings server on loopback."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from keel.embeddings.fake import embed_words
from keel.embeddings.openai import OpenAIEmbedder, OpenAIEmbedderOptions
from keel.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)


def upstream_app(seen: list[dict]) -> web.Application:
    """Vectors are the fake embedder's, scaled by 3 so Keel's normalisation shows; the model
    name picks a behaviour."""

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        model = body["model"]
        if model == "error-500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if model == "error-429":
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"}
            )
        if model == "error-400":
            return web.json_response(
                {"error": {"message": "too long", "param": "input", "code": "bad"}}, status=400
            )
        if model == "slow":
            await asyncio.sleep(2)
        dim = body.get("dimensions") or 8
        result = embed_words(body["input"], dim)
        rows = [(3 * v).tolist() for v in result.vectors]
        if model == "short":
            rows = rows[:-1]
        data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
        data.reverse()  # servers may answer out of order: Keel sorts by index
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    return app


@pytest.fixture
async def upstream():
    seen: list[dict] = []
    server = TestServer(upstream_app(seen), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1")), seen
    await server.close()


def embedder(base_url: str, model: str = "emb", **options) -> OpenAIEmbedder:
    opts = OpenAIEmbedderOptions(base_url=base_url, model=model, **options)
    return OpenAIEmbedder("remote", opts)


async def test_embeds_in_order_normalised_and_learns_dim(upstream):
    base_url, seen = upstream
    e = embedder(base_url, api_key="sk-test")
    await e.start()
    assert e.dim == 8  # from the probe
    texts = ["reset my password", "reset password", "weather today"]
    result = await e.embed(texts)
    expected = embed_words(texts, 8)
    np.testing.assert_allclose(result.vectors, expected.vectors, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-6)
    assert result.tokens == expected.tokens
    assert seen[-1]["auth"] == "Bearer sk-test"
    assert seen[-1]["body"]["encoding_format"] == "float"
    assert e.fingerprint == f"openai:{base_url.split('/')[2]}/emb"
    await e.aclose()


async def test_batches_and_dimensions(upstream):
    base_url, seen = upstream
    e = embedder(base_url, dimensions=16, batch_size=4, max_concurrency=2)
    await e.start()
    assert e.dim == 16 and not seen  # known from `dimensions`: no probe
    texts = [f"text number {i}" for i in range(10)]
    result = await e.embed(texts)
    assert result.vectors.shape == (10, 16)
    np.testing.assert_allclose(result.vectors, embed_words(texts, 16).vectors, atol=1e-6)
    assert [len(s["body"]["input"]) for s in seen] == [4, 4, 2]
    assert all(s["body"]["dimensions"] == 16 for s in seen)
    assert e.fingerprint.endswith("/emb:16")
    await e.aclose()


async def test_dim_option_skips_probe(upstream):
    base_url, seen = upstream
    e = embedder(base_url, dim=8)
    await e.start()
    assert not seen
    assert (await e.embed([])).vectors.shape == (0, 8)
    await e.aclose()


@pytest.mark.parametrize(
    "model, error, status",
    [
        ("error-500", UpstreamError, 502),
        ("error-429", UpstreamRateLimited, 429),
        ("error-400", InvalidRequest, 400),
        ("short", UpstreamError, 502),
    ],
)
async def test_upstream_errors(upstream, model, error, status):
    e = embedder(upstream[0], model=model, dim=8)
    await e.start()
    with pytest.raises(error) as info:
        await e.embed(["a", "b"])
    assert info.value.status == status
    if model == "error-429":
        assert info.value.headers == {"Retry-After": "7"}
    await e.aclose()


async def test_wrong_base_url_names_embeddings(upstream):
    e = embedder(upstream[0].removesuffix("/v1"), dim=8)
    with pytest.raises(UpstreamError, match="/embeddings: check its base_url"):
        await e.embed(["a"])
    await e.aclose()


async def test_read_timeout(upstream):
    e = embedder(upstream[0], model="slow", dim=8, read_timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await e.embed(["a"])
    await e.aclose()


async def test_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = embedder(f"http://127.0.0.1:{port}/v1", dim=8)
    with pytest.raises(UpstreamError, match="could not reach embedder"):
        await e.embed(["a"])
    await e.aclose()


def test_options_are_checked():
    with pytest.raises(ValueError):
        OpenAIEmbedderOptions(base_url="api.openai.com", model="m")
    with pytest.raises(ValueError):
        OpenAIEmbedderOptions(base_url="http://x/v1", model="m", batchsize=3)
