"""The gateway records its traces on SQLite and on PostgreSQL alike (same code, same test)."""

from __future__ import annotations

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import StoreConfig
from keel.gateway import Gateway
from keel.ops.trace_queries import get_trace, list_traces
from tests.api.conftest import fake_config
from tests.store.backends import db_url  # noqa: F401 - the fixture, parametrized per backend


async def test_requests_and_errors_are_traced(db_url, tmp_path):  # noqa: F811
    gateway = Gateway(fake_config(tmp_path, store=StoreConfig(url=db_url)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as session:
            ids = []
            for model in ("fake/echo", "fake/error-429", "no-such-model"):
                body = {"model": model, "messages": [{"role": "user", "content": "hi there"}]}
                async with session.post(server.make_url("/v1/chat/completions"), json=body) as r:
                    ids.append((r.status, r.headers["x-keel-trace-id"]))
            body = {"model": "fake/echo", "stream": True,
                    "messages": [{"role": "user", "content": "streamed words"}]}
            async with session.post(server.make_url("/v1/chat/completions"), json=body) as r:
                await r.read()
                ids.append((r.status, r.headers["x-keel-trace-id"]))
        assert gateway.recorder.flush(10)
        store = gateway.recorder.store
        traces = {i: get_trace(store, i) for _, i in ids}
        for status, trace_id in ids:
            assert traces[trace_id]["status"] == status
        ok, limited, unknown, streamed = (traces[i] for _, i in ids)
        assert ok["response"]["choices"][0]["message"]["content"] == "hi there"
        assert limited["error"]["code"] == "rate_limit_exceeded"
        assert unknown["model"] == "no-such-model" and unknown["status"] == 404
        assert streamed["stream"] and streamed["response"]["content"] == "streamed words"
        assert streamed["ttft_ms"] is not None
        assert len(list_traces(store, limit=10)) == 4
    finally:
        await server.close()
