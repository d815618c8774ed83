"""Chat completions over HTTP: shapes, streaming, headers and the trace of each request."""

from __future__ import annotations

import json

from tests.openai_schema import assert_valid

USER = [{"role": "user", "content": "the quick brown fox"}]


async def read_sse(response) -> list:
    events = []
    async for line in response.content:
        line = line.strip()
        if line.startswith(b"data: "):
            data = line[6:]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


async def test_chat_completion_matches_the_openai_schema(keel, session):
    base, gateway = keel
    async with session.post(f"{base}/v1/chat/completions",
                            json={"model": "fake/echo", "messages": USER}) as r:
        body = await r.json()
        headers = r.headers
    assert r.status == 200
    assert_valid("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "the quick brown fox"
    assert headers["x-keel-provider"] == "fake" and headers["x-keel-model"] == "echo"
    gateway.recorder.flush(5)
    from keel.ops.trace_queries import get_trace

    trace = get_trace(gateway.recorder.store, headers["x-keel-trace-id"])
    assert trace["model"] == "fake/echo" and trace["upstream_model"] == "echo"
    assert trace["status"] == 200 and trace["completion_tokens"] == 4
    assert trace["system_fingerprint"] == body["system_fingerprint"]
    assert [s["name"] for s in trace["spans"]] == ["json_mode", "provider"]
    assert trace["request"]["messages"] == USER


async def test_stream_sends_chunks_then_done_and_usage_only_when_asked(keel, session):
    base, gateway = keel
    for include_usage in (False, True):
        body = {"model": "fake/echo", "messages": USER, "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        async with session.post(f"{base}/v1/chat/completions", json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            trace_id = r.headers["x-keel-trace-id"]
            events = await read_sse(r)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        for chunk in chunks:
            assert_valid("CreateChatCompletionStreamResponse", chunk)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "the quick brown fox"
        usage_chunks = [c for c in chunks if not c["choices"]]
        assert len(usage_chunks) == (1 if include_usage else 0)
        if include_usage:  # as OpenAI: the others say `"usage": null`
            assert all(c["usage"] is None for c in chunks if c["choices"])
        gateway.recorder.flush(5)
        from keel.ops.trace_queries import get_trace

        trace = get_trace(gateway.recorder.store, trace_id)
        # The trace keeps usage and text even when the client did not ask for usage.
        assert trace["completion_tokens"] == 4 and trace["stream"]
        assert trace["response"]["content"] == "the quick brown fox"
        assert trace["ttft_ms"] is not None and trace["ttft_ms"] <= trace["latency_ms"]


async def test_model_defaults_apply_unless_the_client_sets_them(tmp_path):
    from keel.config import KeelConfig, ModelConfig, ProviderConfig
    from keel.gateway import Gateway
    from keel.pipeline import Trace

    config = KeelConfig(state_dir=tmp_path, providers={"f": ProviderConfig(kind="fake")},
                        models={"m": ModelConfig(provider="f", model="echo",
                                                 defaults={"temperature": 0.2, "max_tokens": 2})})
    gateway = Gateway(config)
    ctx = gateway.context_for({"model": "m", "messages": USER, "temperature": 1.0}, Trace())
    assert ctx.body["temperature"] == 1.0 and ctx.body["max_tokens"] == 2
    result = await ctx.route.handler(ctx)
    assert result["choices"][0]["finish_reason"] == "length"


async def test_a_priced_model_reports_the_cost_of_each_answer(tmp_path):
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from keel.api import create_app
    from keel.config import KeelConfig, ModelConfig, PricingConfig, ProviderConfig
    from keel.gateway import Gateway

    config = KeelConfig(state_dir=tmp_path, providers={"f": ProviderConfig(kind="fake")},
                        models={"priced": ModelConfig(provider="f", model="echo",
                                                      pricing=PricingConfig(input=2, output=10)),
                                "free": ModelConfig(provider="f", model="echo")})
    server = TestServer(create_app(Gateway(config)), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            url = server.make_url("/v1/chat/completions")
            async with session.post(url, json={"model": "priced", "messages": USER}) as r:
                usage = (await r.json())["usage"]
                cost = float(r.headers["x-keel-cost-usd"])
            async with session.post(url, json={"model": "free", "messages": USER}) as r:
                assert "x-keel-cost-usd" not in r.headers
        expected = (usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 10) / 1e6
        assert abs(cost - expected) < 1e-8 and cost > 0
    finally:
        await server.close()
