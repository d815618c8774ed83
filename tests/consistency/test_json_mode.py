"""The json_mode layer: valid answers pass, invalid ones are repaired once, then fail clearly."""

from __future__ import annotations

import orjson
import pytest

from keel.config import KeelConfig, LayerSpec, ModelConfig, ProviderConfig
from keel.pipeline.json_check import problem_with
from keel.errors import UpstreamError
from keel.gateway import Gateway
from keel.pipeline import Trace

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


def gateway(tmp_path, repair_attempts=1) -> Gateway:
    names = ["json", "bad-json", "bad-json-once", "echo", "tool-call"]
    return Gateway(KeelConfig(
        state_dir=tmp_path,
        providers={"f": ProviderConfig(kind="fake")},
        models={n: ModelConfig(provider="f", model=n) for n in names},
        pipeline=[LayerSpec(name="json_mode", options={"repair_attempts": repair_attempts})],
    ))


def request(model, fmt, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "a city"}],
            "response_format": fmt, **extra}


def schema_format(schema=SCHEMA):
    return {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}


async def run(gw, body):
    trace = Trace()
    ctx = gw.context_for(body, trace)
    return await ctx.route.handler(ctx), trace


def test_problem_with_names_what_is_wrong():
    assert problem_with('{"a": 1}', None) is None
    assert "not valid JSON" in problem_with('{"a": ', None)
    assert "JSON object" in problem_with("[1]", None)
    assert "population" in problem_with('{"city": "Oslo"}', SCHEMA)
    assert "population" in problem_with('{"city": "Oslo", "population": "many"}', SCHEMA)
    assert problem_with('{"city": "Oslo", "population": 700000}', SCHEMA) is None


async def test_valid_schema_answer_passes_untouched(tmp_path):
    result, trace = await run(gateway(tmp_path), request("json", schema_format()))
    content = orjson.loads(result["choices"][0]["message"]["content"])
    assert set(content) == {"city", "population"}
    assert [s.name for s in trace.spans] == ["json_mode", "provider"]


async def test_invalid_answer_is_repaired_once_and_usage_adds_up(tmp_path):
    gw = gateway(tmp_path)
    result, trace = await run(gw, request("bad-json-once", {"type": "json_object"}))
    orjson.loads(result["choices"][0]["message"]["content"])
    names = [s.name for s in trace.spans]
    assert names.count("provider") == 2 and "json_mode.repair" in names
    repair = next(s for s in trace.spans if s.name == "json_mode.repair")
    assert "not valid JSON" in repair.attrs["problem"]
    assert result["usage"]["total_tokens"] > 0
    single, _ = await run(gw, request("json", {"type": "json_object"}))
    assert result["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]


async def test_still_invalid_after_repair_is_502_saying_why(tmp_path):
    with pytest.raises(UpstreamError) as info:
        await run(gateway(tmp_path), request("bad-json", {"type": "json_object"}))
    assert info.value.status == 502 and info.value.code == "invalid_json_output"
    assert "not valid JSON" in info.value.message and "1 repair" in info.value.message


async def test_no_repair_when_configured_off(tmp_path):
    with pytest.raises(UpstreamError):
        await run(gateway(tmp_path, repair_attempts=0), request("bad-json-once",
                                                                  {"type": "json_object"}))


async def test_text_format_and_tool_calls_are_not_checked(tmp_path):
    gw = gateway(tmp_path)
    result, _ = await run(gw, request("echo", {"type": "text"}))
    assert result["choices"][0]["message"]["content"] == "a city"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    result, _ = await run(gw, request("tool-call", {"type": "json_object"}, tools=tools))
    assert result["choices"][0]["message"]["tool_calls"]


async def test_streamed_json_is_checked_at_the_end_and_noted_on_the_trace(tmp_path):
    gw = gateway(tmp_path)
    trace = Trace()
    ctx = gw.context_for(request("bad-json", {"type": "json_object"}, stream=True), trace)
    chunks = [c async for c in await ctx.route.handler(ctx)]
    assert chunks
    check = next(s for s in trace.spans if s.name == "json_mode.check")
    assert "not valid JSON" in check.attrs["problem"]
