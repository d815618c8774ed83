"""Streamed requests: tool rounds are held back, the final answer streams to the client."""

from __future__ import annotations

import openai
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig, ModelConfig, ProviderConfig, ToolConfig
from keel.gateway import Gateway
from keel.grounding.tools.loop import STOPPED
from tests.grounding.tools.scripted import (
    Harness,
    ScriptedProvider,
    calls,
    tool_results,
)
from tests.grounding.tools.test_layer import WEATHER, answer_with_results, py


def content(chunks) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "")
                   for c in chunks if c["choices"])


async def test_the_final_answer_streams_and_tool_rounds_stay_hidden(tmp_path):
    provider = ScriptedProvider(calls(("add", {"a": 40}), content="let me add."),
                                answer_with_results)
    async with Harness(tmp_path, {"add": py("add")}) as h:
        chunks, trace = await h.ask(provider, stream=True)
    assert all(b["stream"] for b in provider.bodies)
    assert tool_results(provider.bodies[1]) == ["42"]  # arguments were put back together
    assert provider.bodies[1]["messages"][1]["content"] == "let me add. "
    assert content(chunks) == "let me add. results: 42 "
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert sum("role" in d for d in deltas) == 1 and not any("tool_calls" in d for d in deltas)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    assert finish[0]["tool_runs"][0]["name"] == "add"
    assert chunks[-1]["usage"]["total_tokens"] == 30 and chunks[-1]["choices"] == []
    assert len({c["id"] for c in chunks}) == 1
    assert [s.name for s in trace.spans].count("tool:add") == 1


async def test_a_client_tool_call_streams_through(tmp_path):
    provider = ScriptedProvider(calls(("get_weather", {"city": "Oslo"})))
    async with Harness(tmp_path, {"add": py("add")}) as h:
        chunks, _ = await h.ask(provider, stream=True, tools=[WEATHER])
    parts = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert parts[0]["function"]["name"] == "get_weather"
    assert "".join(p["function"]["arguments"] for p in parts) == '{"city":"Oslo"}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


async def test_a_stream_stops_after_max_rounds(tmp_path):
    provider = ScriptedProvider(calls(("add", {"a": 1})))
    async with Harness(tmp_path, {"add": py("add")}, max_rounds=1) as h:
        chunks, _ = await h.ask(provider, stream=True)
    assert content(chunks) == STOPPED.format(rounds=1)
    assert provider.bodies[-1]["tool_choice"] == "none"


async def test_through_the_http_api_with_the_openai_sdk(tmp_path):
    config = KeelConfig(
        state_dir=tmp_path,
        providers={"f": ProviderConfig(kind="fake")},
        tools={"add": ToolConfig(**py("add"))},
        models={"calc": ModelConfig(provider="f", model="echo", tools=["add"])},
    )
    gateway = Gateway(config)
    provider = ScriptedProvider(calls(("add", {"a": 40})), answer_with_results)
    gateway.routes["calc"].provider = provider
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x",
                                    max_retries=0)
        question = [{"role": "user", "content": "40 + 2?"}]
        completion = await client.chat.completions.create(model="calc", messages=question)
        assert completion.choices[0].message.content == "results: 42"
        assert completion.model_extra["tool_runs"][0]["ok"] is True
        gateway.routes["calc"].provider = ScriptedProvider(
            calls(("add", {"a": 40})), answer_with_results)
        stream = await client.chat.completions.create(
            model="calc", messages=question, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "results: 42 ")
        assert chunks[-1].usage.total_tokens == 30
    finally:
        await server.close()
