"""One recording path: `Gateway.complete` (library, evals) and the HTTP handlers trace an
outcome alike — same status, same OpenAI error body; a cancelled call is a 499."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.api.appkeys import GATEWAY
from keel.config import KeelConfig, ModelConfig, ProviderConfig
from keel.errors import ClientClosed, InternalError, ModelNotFound
from keel.gateway import Gateway
from keel.ops.trace_queries import get_trace
from keel.pipeline import Trace

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def gateway(tmp_path):
    config = KeelConfig(
        state_dir=tmp_path,
        providers={"fake": ProviderConfig(kind="fake")},
        models={"echo": ModelConfig(provider="fake", model="echo"),
                "slow": ModelConfig(provider="fake", model="slow-60000")},
    )
    async with Gateway(config) as gw:
        yield gw


async def test_a_cancelled_call_is_recorded_as_499(gateway):
    trace = Trace()
    task = asyncio.create_task(gateway.complete({"model": "slow", "messages": USER}, trace=trace))
    while not trace.spans:  # until the request is in the provider
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert trace.status == 499
    assert trace.error == ClientClosed().to_openai()["error"]
    assert gateway.recorder.flush(10)
    assert get_trace(gateway.recorder.store, trace.id)["status"] == 499


async def test_a_keel_error_is_recorded_as_on_the_http_path(gateway):
    trace = Trace()
    with pytest.raises(ModelNotFound) as raised:
        await gateway.complete({"model": "nope", "messages": USER}, trace=trace)
    assert trace.status == 404
    assert trace.error == raised.value.to_openai()["error"]
    assert trace.error["code"] == "model_not_found" and trace.error["param"] == "model"


async def test_http_and_library_record_the_same_error(gateway):
    server = TestServer(create_app(Gateway(gateway.config)), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            body = {"model": "nope", "messages": USER}
            async with session.post(server.make_url("/v1/chat/completions"), json=body) as r:
                trace_id = r.headers["x-keel-trace-id"]
        recorder = server.app[GATEWAY].recorder
        assert recorder.flush(10)
        over_http = get_trace(recorder.store, trace_id)
    finally:
        await server.close()
    trace = Trace()
    with pytest.raises(ModelNotFound):
        await gateway.complete(body, trace=trace)
    assert gateway.recorder.flush(10)
    in_process = get_trace(gateway.recorder.store, trace.id)
    assert (in_process["status"], in_process["error"]) == (over_http["status"], over_http["error"])


async def test_an_unexpected_exception_is_recorded_as_a_500_and_raised_unchanged(
        gateway, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway, "context_for", broken)
    trace = Trace()
    with pytest.raises(RuntimeError, match="a bug"):
        await gateway.complete({"model": "echo", "messages": USER}, trace=trace)
    assert trace.status == 500
    assert trace.error == InternalError.for_trace(trace.id).to_openai()["error"]
