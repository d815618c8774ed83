"""End to end on the embedded model: `keel serve` with no config, driven by the OpenAI SDK."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.openai_schema import assert_valid
from tests.servers import http, keel_server, wait_for_trace

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keel-local")


@pytest.fixture(scope="module")
def base_url(workdir):
    with keel_server(workdir) as url:  # no config: the embedded defaults
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def test_serves_smollm2_by_default_with_state_in_dot_keel(client, workdir):
    assert [m.id for m in client.models.list()] == ["smollm2", "minilm"]
    assert (workdir / ".keel" / "keel.db").exists()


def test_chat_and_its_trace(client, workdir):
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=QUESTION, max_tokens=30, seed=1)
    completion = raw.parse()
    assert_valid("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
    assert completion.choices[0].message.content
    assert completion.system_fingerprint.startswith("fp_")
    trace = wait_for_trace(workdir, raw.headers["x-keel-trace-id"])
    assert trace["provider"] == "local" and trace["status"] == 200
    assert trace["completion_tokens"] == completion.usage.completion_tokens
    assert trace["system_fingerprint"] == completion.system_fingerprint


def test_stream_with_usage(client):
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=30, stream=True,
        stream_options={"include_usage": True}))
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0


def test_json_schema_answer_validates(client):
    schema = {"type": "object",
              "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"]}
    completion = client.chat.completions.create(
        model="smollm2", max_tokens=60,
        messages=[{"role": "user", "content": "Give me a European capital and its country."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    value = json.loads(completion.choices[0].message.content)
    assert set(value) >= {"city", "country"}


def test_same_seed_same_text(client):
    def ask(seed):
        return client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=40, temperature=0.8, seed=seed
        ).choices[0].message.content

    assert ask(42) == ask(42)


def test_n_above_one_is_refused_saying_so(base_url):
    status, _, payload = http("POST", f"{base_url}/chat/completions",
                              {"model": "smollm2", "messages": QUESTION, "n": 2})
    assert status == 400 and payload["error"]["param"] == "n"
    assert_valid("ErrorResponse", payload)


def test_a_client_that_leaves_mid_stream_is_recorded_and_the_server_stays_up(base_url, workdir):
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}/chat/completions", method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "smollm2", "messages": QUESTION, "max_tokens": 400,
                         "stream": True}).encode())
    response = urllib.request.urlopen(request, timeout=60)
    trace_id = response.headers["x-keel-trace-id"]
    response.readline()
    response.close()  # the client goes away while the model is generating
    started = time.monotonic()
    status, _, payload = http("GET", base_url.removesuffix("/v1") + "/healthz")
    assert status == 200 and payload["status"] == "ok"
    trace = wait_for_trace(workdir, trace_id, timeout=30)
    assert trace["status"] in (200, 499)
    assert time.monotonic() - started < 30
