"""The `fake` provider in process: each scripted behaviour, in chat and in stream."""

from __future__ import annotations

import json
import time

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from keel.errors import InvalidRequest, UpstreamError, UpstreamRateLimited
from keel.providers import provider_class, shapes
from keel.providers.fake import FakeOptions, FakeProvider, example_instance
from tests.openai_schema import assert_valid


def assert_valid_completion(completion: dict) -> None:
    assert_valid("CreateChatCompletionResponse", completion)


def assert_valid_chunk(chunk: dict) -> None:
    assert_valid("CreateChatCompletionStreamResponse", chunk)



def body(text: str = "hello big world", **extra) -> dict:
    return {"model": "public", "messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": text}], **extra}


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider("fake", FakeOptions())


async def collect(provider, request, model) -> list[dict]:
    return [c async for c in provider.stream(request, model)]


def content_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_registered_as_kind_fake():
    assert provider_class("fake") is FakeProvider
    with pytest.raises(ValidationError, match="slow_mz"):
        FakeOptions(slow_mz=1)


async def test_echo_replies_with_the_last_user_message(fake):
    result = await fake.chat(body(), "echo")
    assert_valid_completion(result)
    assert result["choices"][0]["message"]["content"] == "hello big world"
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert result["system_fingerprint"] == "fp_fake_v1"
    assert result["model"] == "echo"


async def test_prefix_parts_and_unknown_names(fake):
    text_parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    parts = [{"role": "user", "content": text_parts}]
    result = await fake.chat({"model": "x", "messages": parts}, "fake/echo")
    assert result["choices"][0]["message"]["content"] == "a b"
    result = await fake.chat(body("same"), "gpt-4o-mini")
    assert result["choices"][0]["message"]["content"] == "same"


async def test_fixed_text_and_n_choices(fake):
    result = await fake.chat(body(n=2), "fixed:the answer")
    assert [c["message"]["content"] for c in result["choices"]] == ["the answer"] * 2
    assert [c["index"] for c in result["choices"]] == [0, 1]
    assert_valid_completion(result)


async def test_max_tokens_truncates_with_finish_reason_length(fake):
    result = await fake.chat(body("one two three four", max_tokens=2), "echo")
    choice = result["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("one two", "length")
    chunks = await collect(fake, body("one two three four", max_completion_tokens=3), "echo")
    assert content_of(chunks) == "one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_stream_goes_word_by_word_then_finish_then_usage(fake):
    chunks = await collect(fake, body("hello big world", stream=True), "echo")
    for chunk in chunks:
        assert_valid_chunk(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert words == ["hello ", "big ", "world"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    assert len({c["id"] for c in chunks}) == 1


async def test_json_without_schema_is_an_object(fake):
    result = await fake.chat(body(response_format={"type": "json_object"}), "json")
    assert json.loads(result["choices"][0]["message"]["content"]) == {"echo": "hello big world"}


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {
        "color": {"enum": ["red", "green"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "score": {"type": "number", "minimum": 3.5},
        "count": {"type": "integer", "exclusiveMinimum": 0},
        "ok": {"type": "boolean"},
        "maybe": {"type": ["null", "string"]},
        "code": {"type": "string", "minLength": 8},
        "when": {"type": "string", "format": "date"},
        "nested": {"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]}}},
    {"type": "object",
     "$defs": {"item": {"type": "object", "properties": {"id": {"type": "integer"}},
                        "required": ["id"]}},
     "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                    "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
     "required": ["items", "either"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_json_schema_answers_validate(fake, schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    for chunks in (None, await collect(fake, body(response_format=fmt), "json")):
        if chunks is None:
            result = await fake.chat(body(response_format=fmt), "fake/json")
            text = result["choices"][0]["message"]["content"]
        else:
            text = content_of(chunks)
        Draft202012Validator(schema).validate(json.loads(text))


def test_example_instance_of_scalars():
    assert example_instance({"type": "string", "maxLength": 2}) == "fa"
    assert example_instance({"type": "integer", "minimum": 2.5}) == 3
    assert example_instance({"type": "number", "maximum": -4}) == -4
    assert example_instance({"type": "array", "items": {"type": "boolean"}, "maxItems": 0}) == []


async def test_bad_json_is_never_valid_json(fake):
    result = await fake.chat(body(response_format={"type": "json_object"}), "bad-json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(result["choices"][0]["message"]["content"])


async def test_bad_json_once_alternates(fake):
    request = body(response_format={"type": "json_object"})
    texts = [(await fake.chat(request, "bad-json-once"))["choices"][0]["message"]["content"]
             for _ in range(3)]
    assert json.loads(texts[1]) == {"echo": "hello big world"}
    for bad in (texts[0], texts[2]):
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}}]


async def test_tool_call_calls_the_first_tool(fake):
    result = await fake.chat(body(tools=TOOLS), "tool-call")
    assert_valid_completion(result)
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    Draft202012Validator(TOOLS[0]["function"]["parameters"]).validate(
        json.loads(call["function"]["arguments"]))


async def test_tool_call_streams_one_tool_call_delta(fake):
    chunks = await collect(fake, body(tools=TOOLS, stream=True), "tool-call")
    for chunk in chunks:
        assert_valid_chunk(chunk)
    delta = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert delta["index"] == 0 and delta["function"]["name"] == "get_weather"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_call_without_tools_is_the_clients_mistake(fake):
    with pytest.raises(InvalidRequest) as info:
        await fake.chat(body(), "tool-call")
    assert info.value.param == "tools"


async def test_error_429_and_500(fake):
    with pytest.raises(UpstreamRateLimited) as info:
        await fake.chat(body(), "error-429")
    assert info.value.headers == {"Retry-After": "7"} and info.value.status == 429
    with pytest.raises(UpstreamError) as info:
        await collect(fake, body(), "fake/error-500")
    assert info.value.status == 502 and type(info.value) is UpstreamError


async def test_errors_come_before_any_chunk(fake):
    stream = fake.stream(body(), "error-503")
    with pytest.raises(UpstreamError):
        await anext(stream)


async def test_flaky_fails_every_other_call(fake):
    outcomes = []
    for _ in range(4):
        try:
            await fake.chat(body(), "flaky")
            outcomes.append("ok")
        except UpstreamError:
            outcomes.append("fail")
    assert outcomes == ["fail", "ok", "fail", "ok"]


async def test_slow_waits_then_echoes():
    fake = FakeProvider("fake", FakeOptions(slow_ms=30))
    start = time.perf_counter()
    result = await fake.chat(body("a"), "slow")
    assert time.perf_counter() - start >= 0.03
    assert result["choices"][0]["message"]["content"] == "a"
    start = time.perf_counter()
    chunks = await collect(fake, body("a b c"), "slow-20")
    assert time.perf_counter() - start >= 0.06
    assert content_of(chunks) == "a b c"


def test_shapes_normalize_fills_what_strict_clients_need():
    upstream = {"id": "x", "model": "m", "usage": None, "choices": [{"message": {"content": "hi"}}]}
    completion = shapes.normalize_completion(upstream)
    assert completion is upstream
    assert_valid_completion(completion)
    upstream = {"id": "x", "model": "m", "choices": [{"delta": {"content": "a"}}]}
    chunk = shapes.normalize_chunk(upstream)
    assert_valid_chunk(chunk)
