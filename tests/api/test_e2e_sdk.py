"""End to end: the official OpenAI SDK against `keel serve`, which calls the fake upstream over
a real socket through the `openai` provider — the set-up of an application changing base_url."""

from __future__ import annotations

import socket

import openai
import pytest

from keel.providers.fake_server import serve_fake_upstream
from tests.openai_schema import assert_valid
from tests.servers import http, keel_server, wait_for_trace

CONFIG = """
providers:
  upstream: {{kind: openai, base_url: "{upstream}", api_key: "${{UPSTREAM_KEY}}", read_timeout: 0.5}}
  closed: {{kind: openai, base_url: "http://127.0.0.1:{closed}/v1"}}
models:
  gpt-4o-mini: {{provider: upstream, model: echo}}
  json: {{provider: upstream, model: json}}
  slow: {{provider: upstream, model: slow-2000}}
  limited: {{provider: upstream, model: error-429}}
  broken: {{provider: upstream, model: error-500}}
  unreachable: {{provider: closed, model: echo}}
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keel-e2e")


@pytest.fixture(scope="module")
def base_url(workdir):
    with serve_fake_upstream() as upstream:
        config = CONFIG.format(upstream=upstream, closed=closed_port())
        with keel_server(workdir, config, env={"UPSTREAM_KEY": "sk-upstream"}) as url:
            yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)


MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello from the sdk"}]


def test_sync_chat(client, workdir):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from the sdk"
    assert completion.system_fingerprint
    assert_valid("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
    trace = wait_for_trace(workdir, raw.headers["x-keel-trace-id"])
    assert trace["provider"] == "upstream" and trace["upstream_model"] == "echo"
    assert trace["status"] == 200 and trace["total_tokens"] == completion.usage.total_tokens


async def test_async_chat_and_stream(base_url):
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      seed=7, temperature=0.5, max_tokens=50)
    assert completion.choices[0].message.content == "hello from the sdk"
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True})
    text, usage = [], None
    async for chunk in stream:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "hello from the sdk"
    assert usage is not None and usage.completion_tokens == 4
    await client.close()


def test_sync_stream_without_usage(client):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                 stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_schema_through_the_upstream(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    completion = client.chat.completions.create(
        model="json", messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    import json

    assert isinstance(json.loads(completion.choices[0].message.content)["n"], int)


def test_upstream_429_reaches_the_sdk_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(("model", "status", "code"), [
    ("broken", 502, "upstream_error"),
    ("unreachable", 502, "upstream_error"),
    ("slow", 504, "upstream_timeout"),
])
def test_upstream_failures_map_to_gateway_statuses(base_url, model, status, code):
    got, _, payload = http("POST", f"{base_url}/chat/completions",
                           {"model": model, "messages": MESSAGES})
    assert got == status, payload
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == code


def test_unknown_model_is_not_found_for_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_bad_request_is_bad_request_for_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=5)
    assert info.value.param == "temperature"


def test_models_through_the_sdk(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "json", "unreachable"} <= ids
    assert client.models.retrieve("json").id == "json"
