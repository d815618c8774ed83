"""The fake upstream over a real socket, driven by the official OpenAI SDK and by raw HTTP."""

from __future__ import annotations

import subprocess
import sys

import openai
import orjson
import pytest
from aiohttp import ClientSession

from keel.providers.fake_server import serve_fake_upstream
from tests.openai_schema import assert_valid


def assert_valid_completion(completion: dict) -> None:
    assert_valid("CreateChatCompletionResponse", completion)


def assert_valid_chunk(chunk: dict) -> None:
    assert_valid("CreateChatCompletionStreamResponse", chunk)


USER = [{"role": "user", "content": "ping pong"}]


@pytest.fixture(scope="module")
def upstream():
    with serve_fake_upstream() as url:
        yield url


@pytest.fixture
def client(upstream):
    with openai.OpenAI(base_url=upstream, api_key="unused", max_retries=0) as c:
        yield c


def test_sdk_chat(client):
    result = client.chat.completions.create(model="echo", messages=USER, seed=1)
    assert result.choices[0].message.content == "ping pong"
    assert result.system_fingerprint.startswith("fp_fake")
    assert result.usage.total_tokens == 4
    assert_valid_completion(result.model_dump(exclude_unset=True))


def test_sdk_stream_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="echo", messages=USER, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ping pong"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    for chunk in chunks:
        assert_valid_chunk(chunk.model_dump(exclude_unset=True))


def test_sdk_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="echo", messages=USER, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sdk_tool_call_and_json(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    result = client.chat.completions.create(model="fake/tool-call", messages=USER, tools=tools)
    call = result.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and orjson.loads(call.function.arguments) == {"q": "fake"}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    result = client.chat.completions.create(model="json", messages=USER, response_format=fmt)
    assert orjson.loads(result.choices[0].message.content) == {"n": 0}


def test_sdk_sees_errors_with_their_status(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="error-429", messages=USER)
    assert info.value.response.headers["retry-after"] == "7"
    assert_valid("ErrorResponse", info.value.response.json())
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="error-500", messages=USER, stream=True)
    assert info.value.status_code == 500
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="error-400", messages=USER)


def test_sdk_lists_models(client):
    ids = [m.id for m in client.models.list()]
    assert {"echo", "json", "tool-call", "error-429"} <= set(ids)
    assert client.models.retrieve("echo").id == "echo"


async def test_async_sdk_chat_and_stream(upstream):
    async with openai.AsyncOpenAI(base_url=upstream, api_key="unused", max_retries=0) as client:
        result = await client.chat.completions.create(model="fixed:hi there", messages=USER)
        assert result.choices[0].message.content == "hi there"
        stream = await client.chat.completions.create(model="echo", messages=USER, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "ping pong"


async def test_sse_wire_format(upstream):
    async with ClientSession() as session:
        body = {"model": "echo", "messages": USER, "stream": True}
        async with session.post(f"{upstream}/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: {") for e in events[:-2])


async def test_malformed_requests_and_required_key():
    with serve_fake_upstream(api_key="secret") as url:
        async with ClientSession() as session:
            async with session.post(f"{url}/chat/completions", json={"model": "echo",
                                                                     "messages": USER}) as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer secret"}
            async with session.post(f"{url}/chat/completions", data=b"{nope",
                                    headers=headers) as resp:
                assert resp.status == 400
                assert_valid("ErrorResponse", await resp.json())
            async with session.post(f"{url}/chat/completions", json={"model": "echo"},
                                    headers=headers) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["param"] == "messages"


def test_cli_prints_where_it_listens_and_serves():
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "fake-upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fake upstream listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
            result = client.chat.completions.create(model="echo", messages=USER)
        assert result.choices[0].message.content == "ping pong"
    finally:
        process.terminate()
        process.wait(timeout=10)
