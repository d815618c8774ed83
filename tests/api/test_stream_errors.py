"""Client JSON schemas are checked at the edge; errors after a stream's headers stay in the stream.

Once the SSE headers are out, the only way left to report an error is an event in that stream:
never a second HTTP response written into it. A client that leaves mid-stream is a 499 on the
trace, not a logged 500.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import ClientSession, web

from keel.api import create_app
from keel.errors import NotFound
from keel.gateway import Gateway
from keel.ops.trace_queries import get_trace, list_traces
from tests.api.conftest import fake_config
from tests.openai_schema import assert_valid

USER = [{"role": "user", "content": "hello"}]
SCHEMA_PARAM = "response_format.json_schema.schema"


def json_schema_format(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


BROKEN_SCHEMAS = [
    pytest.param({"type": "strin"}, "strin", id="unknown-type"),
    pytest.param({"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}},
                 "$defs/nope", id="dangling-ref"),
    pytest.param({"type": "object", "properties": {"a": {"$ref": "#missing"}}},
                 "missing", id="dangling-anchor"),
    pytest.param({"$ref": "https://example.com/schema.json"}, "remote", id="remote-ref"),
    pytest.param({"type": "string", "pattern": "("}, "pattern", id="bad-regex"),
]


def stored_trace(gateway, trace_id: str) -> dict:
    assert gateway.recorder.flush(10)
    return get_trace(gateway.recorder.store, trace_id)


def keel_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("keel") and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("schema", "words"), BROKEN_SCHEMAS)
async def test_a_broken_response_schema_is_a_400_naming_the_field(keel, session, schema, words,
                                                                  stream):
    base, gateway = keel
    body = {"model": "fake/json", "messages": USER, "stream": stream,
            "response_format": json_schema_format(schema)}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        payload = await r.json(content_type=None)
        status, trace_id = r.status, r.headers["x-keel-trace-id"]
    assert status == 400, payload
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["param"] == SCHEMA_PARAM
    assert payload["error"]["type"] == "invalid_request_error"
    assert words in payload["error"]["message"]
    trace = stored_trace(gateway, trace_id)
    assert trace["status"] == 400 and trace["model"] == "fake/json"  # listed by its model


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_object", "schema": {"type": "strin"}}},
         "response_format.schema"),
        ({"tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": 5}}}}}]},
         "tools[0].function.parameters"),
    ],
    ids=["json-object-schema", "tool-parameters"],
)
async def test_every_client_schema_is_checked_where_it_is(keel, session, body, param):
    base, _ = keel
    body = {"model": "fake/echo", "messages": USER, **body}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        payload = await r.json(content_type=None)
    assert r.status == 400, payload
    assert payload["error"]["param"] == param


async def test_a_valid_schema_with_refs_is_served(keel, session):
    base, _ = keel
    schema = {"type": "object", "$defs": {"name": {"type": "string"}},
              "properties": {"name": {"$ref": "#/$defs/name"}}, "required": ["name"]}
    body = {"model": "fake/json", "messages": USER, "response_format": json_schema_format(schema)}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        payload = await r.json()
    assert r.status == 200, payload
    assert isinstance(json.loads(payload["choices"][0]["message"]["content"])["name"], str)


def sse_events(raw: bytes) -> list:
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        else:
            assert not block.strip(), f"not an SSE event: {block[:200]!r}"
    return events


async def test_an_unexpected_error_after_the_headers_is_an_sse_error_event(
        keel, session, monkeypatch, caplog):
    base, gateway = keel

    def broken_check(content, schema):  # a bug in a layer, after the first chunk went out
        raise RuntimeError("boom in the stream check")

    monkeypatch.setattr("keel.consistency.json_mode.problem_with", broken_check)
    body = {"model": "fake/json", "messages": USER, "stream": True,
            "response_format": {"type": "json_object"}}
    with caplog.at_level(logging.ERROR):
        async with session.post(f"{base}/v1/chat/completions", json=body) as r:
            status, trace_id = r.status, r.headers["x-keel-trace-id"]
            raw = await r.read()  # a second response head in the body breaks the chunking
    assert status == 200
    assert b"HTTP/1.1" not in raw
    events = sse_events(raw)
    assert events[0]["object"] == "chat.completion.chunk"
    assert "[DONE]" not in events
    error = events[-1]
    assert_valid("ErrorResponse", error)
    assert error["error"]["type"] == "server_error"
    assert trace_id in error["error"]["message"] and "boom" not in error["error"]["message"]
    trace = stored_trace(gateway, trace_id)
    assert trace["status"] == 500 and trace["error"] == error["error"]
    logged = keel_errors(caplog)
    assert len(logged) == 1 and trace_id in logged[0].getMessage() and logged[0].exc_info


@pytest.fixture(params=[False, True], ids=["no-cancellation", "handler-cancellation"])
async def keel_server(request, tmp_path):
    """A Keel with aiohttp's handler cancellation off (aiohttp's default, for an app that embeds
    `create_app` in its own runner) and on (`keel serve`). A runner of its own: aiohttp's
    TestServer always turns cancellation on, whatever it is given."""
    gateway = Gateway(fake_config(tmp_path))
    runner = web.AppRunner(create_app(gateway), handler_cancellation=request.param)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", gateway
    await runner.cleanup()


async def test_a_client_that_leaves_mid_stream_is_a_499_not_a_logged_500(keel_server, caplog):
    base, gateway = keel_server
    words = " ".join(f"w{i}" for i in range(100))  # 100 ms a word: ten seconds if read to the end
    body = {"model": "fake/slow-100", "messages": [{"role": "user", "content": words}],
            "stream": True}
    with caplog.at_level(logging.WARNING):
        async with (ClientSession() as session,
                    session.post(f"{base}/v1/chat/completions", json=body) as r):
            trace_id = r.headers["x-keel-trace-id"]
            await r.content.readuntil(b"\n\n")  # the first chunk, then hang up
            r.close()
        trace = None
        for _ in range(200):  # the handler notices at its next write (100 ms) or at once
            await asyncio.to_thread(gateway.recorder.flush, 1)
            try:
                trace = get_trace(gateway.recorder.store, trace_id)
                break
            except NotFound:
                await asyncio.sleep(0.05)
    assert trace is not None, "the abandoned stream was never recorded"
    assert trace["status"] == 499
    assert trace["error"]["type"] == "client_closed" and trace["error"]["code"] == "client_closed"
    assert trace["response"]["chunks"] >= 1  # what was sent before the client left
    assert keel_errors(caplog) == []


async def test_a_client_that_leaves_before_a_plain_answer_is_a_499(keel_server, caplog):
    base, gateway = keel_server
    body = {"model": "fake/slow-1000", "messages": USER}  # a second before the answer is ready
    with caplog.at_level(logging.WARNING):
        async with ClientSession() as session:
            request = asyncio.ensure_future(session.post(f"{base}/v1/chat/completions", json=body))
            await asyncio.sleep(0.1)
            request.cancel()  # hangs up while Keel is still waiting for the model
            with pytest.raises(asyncio.CancelledError):
                await request
        recorded = []
        for _ in range(100):
            await asyncio.to_thread(gateway.recorder.flush, 1)
            recorded = list_traces(gateway.recorder.store, model="fake/slow-1000")
            if recorded:
                break
            await asyncio.sleep(0.05)
    assert recorded, "the abandoned request was never recorded"
    assert recorded[0]["status"] == 499
    assert keel_errors(caplog) == []
