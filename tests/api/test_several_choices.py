"""`n` > 1 on routes whose layers handle one choice (issue 7, defect 7).

JSON repair, the streaming JSON check, the tools loop and citations each read choice 0 only, so
such a route refuses `n` > 1 at the request edge with a 400 naming the layer, streaming or not,
before anything is sent upstream. Keel runs against the fake upstream over a real socket
through the `openai` provider, as with a remote model.
"""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import EmbedderConfig, KeelConfig, ModelConfig, ProviderConfig, ToolConfig
from keel.gateway import Gateway
from keel.providers.fake_server import serve_fake_upstream

USER = [{"role": "user", "content": "three answers please"}]
JSON_FORMAT = {"type": "json_object"}


@pytest.fixture
async def keel(tmp_path):
    with serve_fake_upstream() as upstream:
        config = KeelConfig(
            state_dir=tmp_path,
            providers={"up": ProviderConfig(kind="openai", base_url=upstream)},
            embedders={"minilm": EmbedderConfig(kind="fake")},  # no ONNX model to load
            tools={"add": ToolConfig(kind="python",
                                     function="tests.grounding.tools.sample_functions:add")},
            models={
                "plain": ModelConfig(provider="up", model="echo"),
                "json": ModelConfig(provider="up", model="json"),
                "rag": ModelConfig(provider="up", model="echo", knowledge={"collection": "faq"}),
                "calc": ModelConfig(provider="up", model="echo", tools=["add"]),
            },
        )
        server = TestServer(create_app(Gateway(config)), host="127.0.0.1")
        await server.start_server()
        async with ClientSession() as session:
            yield str(server.make_url("")).rstrip("/"), session
        await server.close()


async def post(keel, body: dict) -> tuple[int, dict]:
    base, session = keel
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model,extra,layer", [
    ("json", {"response_format": JSON_FORMAT}, "json_mode"),
    ("rag", {}, "knowledge"),
    ("calc", {}, "tools"),
])
async def test_n_above_one_is_refused_naming_the_layer(keel, model, extra, layer, stream):
    status, body = await post(keel, {"model": model, "messages": USER, "n": 3,
                                     "stream": stream, **extra})
    assert status == 400, body
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "unsupported_parameter" and error["param"] == "n"
    assert f"{layer} layer" in error["message"] and "n=3" in error["message"]


async def test_n_above_one_still_works_where_no_layer_needs_one_choice(keel):
    status, body = await post(keel, {"model": "plain", "messages": USER, "n": 3})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    # json_mode is on every route by default, but only acts (and refuses) when JSON is asked.
    status, body = await post(keel, {"model": "json", "messages": USER, "n": 2})
    assert status == 200, body
    assert len(body["choices"]) == 2


async def test_n_of_one_passes_on_every_route(keel):
    for model, extra in [("json", {"response_format": JSON_FORMAT}), ("rag", {}), ("calc", {})]:
        status, body = await post(keel, {"model": model, "messages": USER, "n": 1, **extra})
        assert status == 200, (model, body)
