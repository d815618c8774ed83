"""Every client mistake and upstream failure leaves as an OpenAI-shaped error with its status."""

from __future__ import annotations

import pytest

from tests.openai_schema import assert_valid

USER = [{"role": "user", "content": "hello"}]


async def post(session, url, body=None, data=None, headers=None):
    async with session.post(url, json=body, data=data, headers=headers) as r:
        return r.status, r.headers, await r.json(content_type=None)


def assert_error(status, payload, want_status, param=None, code=None):
    assert status == want_status, payload
    assert_valid("ErrorResponse", payload)
    error = payload["error"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in error["message"]
    return error


async def test_malformed_json_is_400(keel, session):
    base, _ = keel
    status, headers, payload = await post(session, f"{base}/v1/chat/completions",
                                          data=b'{"model": "fake/echo", "messages": [',
                                          headers={"Content-Type": "application/json"})
    error = assert_error(status, payload, 400)
    assert "parse the JSON body" in error["message"]
    assert headers["x-keel-trace-id"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "fake/echo"}, "messages", "missing required parameter"),
        ({"model": "fake/echo", "messages": USER, "temperature": "hot"}, "temperature", "float"),
        ({"model": "fake/echo", "messages": USER, "temperature": 7}, "temperature", "<= 2"),
        ({"model": "fake/echo", "messages": [{"role": "user", "content": 5}]},
         "messages[0].content", "str"),
        ({"model": "fake/echo", "messages": [{"role": "robot", "content": "x"}]},
         "messages[0].role", "expected one of"),
        ({"model": "fake/echo", "messages": USER, "response_format": {"type": "xml"}},
         "response_format.type", "invalid value"),
        ({"model": "fake/echo", "messages": USER, "stream_options": {"include_usage": True}},
         "stream_options", "only allowed when stream"),
        ({"model": 42, "messages": USER}, "model", "str"),
        ([1, 2], None, "JSON object"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(keel, session, body, param, words):
    base, _ = keel
    status, _, payload = await post(session, f"{base}/v1/chat/completions", body)
    error = assert_error(status, payload, 400, param=param)
    assert words in error["message"]


async def test_unknown_model_is_404_model_not_found(keel, session):
    base, _ = keel
    status, _, payload = await post(session, f"{base}/v1/chat/completions",
                                    {"model": "gpt-9", "messages": USER})
    assert_error(status, payload, 404, param="model", code="model_not_found")


async def test_body_over_the_limit_is_413(keel, session):
    base, _ = keel
    big = [{"role": "user", "content": "x" * (70 * 1024)}]
    status, _, payload = await post(session, f"{base}/v1/chat/completions",
                                    {"model": "fake/echo", "messages": big})
    error = assert_error(status, payload, 413)
    assert "max_body_bytes" in error["message"]


async def test_upstream_429_passes_retry_after_on(keel, session):
    base, _ = keel
    status, headers, payload = await post(session, f"{base}/v1/chat/completions",
                                          {"model": "fake/error-429", "messages": USER})
    assert_error(status, payload, 429, code="rate_limit_exceeded")
    assert headers["Retry-After"] == "7"


async def test_upstream_500_is_502(keel, session):
    base, _ = keel
    status, _, payload = await post(session, f"{base}/v1/chat/completions",
                                    {"model": "fake/error-500", "messages": USER})
    assert_error(status, payload, 502)


async def test_streaming_errors_before_the_first_chunk_keep_their_status(keel, session):
    base, _ = keel
    status, headers, payload = await post(session, f"{base}/v1/chat/completions",
                                          {"model": "fake/error-429", "messages": USER,
                                           "stream": True})
    assert_error(status, payload, 429)
    assert headers["Retry-After"] == "7"


async def test_unknown_url_and_method_are_openai_shaped(keel, session):
    base, _ = keel
    async with session.get(f"{base}/v1/nothing") as r:
        assert_error(r.status, await r.json(), 404, code="unknown_url")
    async with session.get(f"{base}/v1/chat/completions") as r:
        assert_error(r.status, await r.json(), 405)


async def test_models_list_and_get(keel, session):
    base, gateway = keel
    async with session.get(f"{base}/v1/models") as r:
        payload = await r.json()
    assert_valid("ListModelsResponse", payload)
    assert {m["id"] for m in payload["data"]} == set(gateway.routes) | {"minilm"}
    async with session.get(f"{base}/v1/models/fake/echo") as r:
        model = await r.json()
    assert_valid("Model", model)
    assert model["id"] == "fake/echo"
    async with session.get(f"{base}/v1/models/nope") as r:
        assert_error(r.status, await r.json(), 404, param="model", code="model_not_found")


async def test_health_and_readiness(keel, session):
    base, _ = keel
    async with session.get(f"{base}/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with session.get(f"{base}/readyz") as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "ready"
    assert set(body["traces"]) >= {"written", "dropped", "pending"}
