"""POST /v1/embeddings over a real loopback socket: shapes, encodings, errors, traces, the SDK."""

from __future__ import annotations

import base64
import socket

import numpy as np
import openai
import pytest
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.api.embeddings import embedding_models
from keel.config import EmbedderConfig, ServerConfig
from keel.embeddings.fake import embed_words
from keel.gateway import Gateway
from tests.api.conftest import fake_config
from tests.openai_schema import assert_valid

TEXTS = ["reset my password", "reset password", "weather in Paris"]


@pytest.fixture
async def keel(tmp_path):
    """(base URL, gateway) of a Keel with the fake embedder (dim 64) as `fake-emb`."""
    config = fake_config(
        tmp_path,
        server=ServerConfig(max_body_bytes=64 * 1024),
        embedders={
            "fake-emb": EmbedderConfig(kind="fake"),
            "down": EmbedderConfig(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1",
                                   model="m", dim=8),
        },
    )
    gateway = Gateway(config)
    app = create_app(gateway)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def post(session, base, body):
    async with session.post(base + "/v1/embeddings", json=body) as r:
        return r.status, r.headers, await r.json()


async def test_float_response_is_openai_shaped_and_traced(keel, session):
    base, gateway = keel
    status, headers, body = await post(session, base, {"model": "fake-emb", "input": TEXTS})
    assert status == 200
    assert_valid("CreateEmbeddingResponse", body)
    assert body["model"] == "fake-emb" and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_array_equal(got, embed_words(TEXTS, 64).vectors)
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    assert headers["x-keel-provider"] == "fake"

    gateway.recorder.flush(5)
    from keel.ops.trace_queries import get_trace

    trace = get_trace(gateway.recorder.store, headers["x-keel-trace-id"])
    assert trace["endpoint"] == "embeddings" and trace["model"] == "fake-emb"
    assert trace["provider"] == "fake" and trace["status"] == 200
    assert trace["prompt_tokens"] == 8 and trace["system_fingerprint"] == "fake:64"
    assert trace["response"]["count"] == 3 and trace["response"]["dim"] == 64
    assert trace["request"]["input"] == TEXTS


async def test_base64_is_little_endian_float32(keel, session):
    base, _ = keel
    body = {"model": "fake-emb", "input": "reset my password", "encoding_format": "base64"}
    status, _, answer = await post(session, base, body)
    assert status == 200
    raw = base64.b64decode(answer["data"][0]["embedding"])
    vector = np.frombuffer(raw, dtype="<f4")
    np.testing.assert_array_equal(vector, embed_words(["reset my password"], 64).vectors[0])
    # OpenAI's schema types `embedding` as numbers only; the rest must still match it.
    answer["data"][0]["embedding"] = vector.tolist()
    assert_valid("CreateEmbeddingResponse", answer)


async def test_dimensions_shortens_and_renormalises(keel, session):
    base, _ = keel
    status, _, body = await post(
        session, base, {"model": "minilm", "input": TEXTS, "dimensions": 64}
    )
    assert status == 200
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


async def test_minilm_is_always_there(keel, session):
    base, _ = keel
    status, _, body = await post(
        session, base, {"model": "minilm", "input": ["How do I delete my account?", ""]}
    )
    assert status == 200
    assert_valid("CreateEmbeddingResponse", body)
    assert len(body["data"][0]["embedding"]) == 384 and len(body["data"]) == 2


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"model": "fake-emb", "input": []}, 400, "input", None),
        ({"model": "fake-emb", "input": ["a"] * 2049}, 400, "input", None),
        ({"model": "fake-emb", "input": 3}, 400, "input", None),
        ({"model": "fake-emb", "input": [1, 2, 3]}, 400, "input", "unsupported_parameter"),
        ({"model": "fake-emb", "input": [[1, 2]]}, 400, "input", "unsupported_parameter"),
        ({"model": "fake-emb"}, 400, "input", None),
        ({"input": "x"}, 400, "model", None),
        ({"model": "fake-emb", "input": "x", "encoding_format": "hex"}, 400,
         "encoding_format", None),
        ({"model": "fake-emb", "input": "x", "dimensions": 65}, 400, "dimensions", None),
        ({"model": "fake-emb", "input": "x", "dimensions": 0}, 400, "dimensions", None),
        ({"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
        (["not", "an", "object"], 400, None, None),
    ],
)
async def test_errors_name_the_field(keel, session, body, status, param, code):
    base, _ = keel
    got, headers, answer = await post(session, base, body)
    assert got == status, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error"
    assert "x-keel-trace-id" in headers


async def test_unreachable_upstream_embedder_is_502(keel, session):
    base, _ = keel
    status, _, body = await post(session, base, {"model": "down", "input": "x"})
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert "could not reach embedder 'down'" in body["error"]["message"]


async def test_body_over_the_limit_is_413(keel, session):
    base, _ = keel
    status, _, body = await post(session, base, {"model": "fake-emb", "input": "x" * 70_000})
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_embedding_models_lists_each_embedder(tmp_path):
    config = fake_config(tmp_path, embedders={"fake-emb": EmbedderConfig(kind="fake")})
    models = embedding_models(Gateway(config))
    assert {m["id"]: m["owned_by"] for m in models} == {"minilm": "local", "fake-emb": "fake"}

    for model in models:
        assert_valid("Model", model)


async def test_openai_sdk_float_and_base64_agree(keel):
    base, _ = keel
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    as_float = await client.embeddings.create(
        model="fake-emb", input=TEXTS, encoding_format="float"
    )
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    by_default = await client.embeddings.create(model="fake-emb", input=TEXTS)
    floats = np.array([d.embedding for d in as_float.data], dtype=np.float32)
    decoded = np.array([d.embedding for d in by_default.data], dtype=np.float32)
    np.testing.assert_array_equal(floats, decoded)
    np.testing.assert_array_equal(floats, embed_words(TEXTS, 64).vectors)
    assert as_float.usage.prompt_tokens == 8 and as_float.model == "fake-emb"

    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="fake-emb", input=[])
    await client.close()


async def test_trace_without_bodies_keeps_no_request(tmp_path, session):
    from keel.config import TracingConfig
    from keel.ops.trace_queries import get_trace

    config = fake_config(tmp_path, tracing=TracingConfig(record_bodies=False),
                         embedders={"fake-emb": EmbedderConfig(kind="fake")})
    gateway = Gateway(config)
    app = create_app(gateway)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        status, headers, _ = await post(
            session, str(server.make_url("")).rstrip("/"), {"model": "fake-emb", "input": "x"}
        )
        assert status == 200
        gateway.recorder.flush(5)
        trace = get_trace(gateway.recorder.store, headers["x-keel-trace-id"])
        assert trace["request"] is None and trace["response"] is None
        assert trace["prompt_tokens"] == 1
    finally:
        await server.close()
