"""The fault matrix: every upstream failure, streaming and not, through a real Keel server.

    Keel client (aiohttp) -> Keel (TestServer) -> FaultProxy -> fake upstream

For each fault the client must get an OpenAI-shaped error with the right status (or, once the
SSE headers went out, an error event and the end of the stream, never `[DONE]`), within the
configured timeouts; the trace must record the status and error; and nothing may leak: Keel's
upstream connector holds no connection it is not using, the event loop's tasks return to the
baseline, and the proxy sees every connection closed once Keel stops. The matrix runs on each
trace store (`tests/store/backends.py`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig, ModelConfig, ProviderConfig, StoreConfig
from keel.gateway import Gateway
from keel.ops.trace_queries import get_trace
from keel.providers.fake_server import serve_fake_upstream
from tests.faults.proxy import Fault, run_proxy
from tests.store.backends import db_url  # noqa: F401 - the fixture, parametrized per backend

READ_TIMEOUT = 1.0  # Keel's read timeout for the upstream; a trickle's gaps stay well under it
HANG = READ_TIMEOUT + 10  # "never a hang": generous, for a busy 2-core runner
MESSAGES = [{"role": "user", "content": "ping pong"}]


@dataclass(frozen=True)
class Case:
    id: str
    fault: Fault | None  # None: the upstream's port refuses connections
    status: int  # what the client sees (streaming: before the headers)
    code: str | None
    stream_event: str | None = None  # streaming: the error event's code, after a 200
    stream_status: int = 502  # streaming: the status the trace records for that event


CASES = [
    Case("refused", None, 502, "upstream_error"),
    Case("429", Fault("status", 429, retry_after="3"), 429, "rate_limit_exceeded"),
    Case("500", Fault("status", 500), 502, "upstream_error"),
    Case("502", Fault("status", 502), 502, "upstream_error"),
    Case("503", Fault("status", 503), 502, "upstream_error"),
    Case("slow-headers", Fault("slow_headers"), 504, "upstream_timeout"),
    Case("reset-mid-body", Fault("reset_mid_body"), 502, "upstream_error", "upstream_error"),
    Case("reset-after-chunks", Fault("reset_after_chunks", after=2), 502, "upstream_error",
         "upstream_error"),
    Case("stall", Fault("stall", after=2), 504, "upstream_timeout", "upstream_timeout", 504),
    Case("trickle", Fault("trickle", delay=0.2), 200, None),
    Case("malformed-json", Fault("malformed_json"), 502, "upstream_error", "upstream_error"),
    Case("truncated", Fault("truncated"), 502, "upstream_error", "upstream_stream_truncated"),
]


@pytest.fixture(scope="module")
def upstream_root():
    with serve_fake_upstream() as url:
        yield url.removesuffix("/v1")


@pytest.fixture
async def keel(upstream_root, db_url, tmp_path):  # noqa: F811
    """(base URL, gateway, proxy) of a Keel whose provider `up` goes through a FaultProxy and
    whose provider `down` points at a port where nothing listens."""
    with run_proxy(upstream_root) as proxy:
        timeouts = {"read_timeout": READ_TIMEOUT, "connect_timeout": READ_TIMEOUT}
        nowhere = f"http://127.0.0.1:{_closed_port()}/v1"
        config = KeelConfig(
            state_dir=tmp_path,
            store=StoreConfig(url=db_url),
            providers={
                "up": ProviderConfig(kind="openai", base_url=proxy.base_url, **timeouts),
                "down": ProviderConfig(kind="openai", base_url=nowhere, **timeouts),
            },
            models={"up/echo": ModelConfig(provider="up", model="echo"),
                    "down/echo": ModelConfig(provider="down", model="echo")},
        )
        gateway = Gateway(config)
        server = TestServer(create_app(gateway), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/"), gateway, proxy
        finally:
            await server.close()
        # Keel has closed its sessions: the proxy must see every connection it accepted closed.
        assert await _eventually(lambda: proxy.open == 0), f"{proxy.open} connections left open"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_upstream_fault(keel, case: Case, stream: bool):
    url, gateway, proxy = keel
    provider = gateway.providers["down" if case.fault is None else "up"]
    model = "down/echo" if case.fault is None else "up/echo"
    # Client connections are not kept alive, so the server's per-connection tasks end too.
    async with ClientSession(connector=TCPConnector(force_close=True)) as client:
        status, _, _ = await _ask(client, url, "up/echo", stream)
        assert status == 200, "the warm-up request through the proxy failed"
        assert await _eventually(lambda: _in_use(gateway) == 0)
        tasks = len(asyncio.all_tasks())

        proxy.client_got_data.clear()
        proxy.fault = case.fault
        started = time.monotonic()
        status, headers, raw = await asyncio.wait_for(
            _ask(client, url, model, stream, proxy.client_got_data), HANG
        )
        elapsed = time.monotonic() - started
        proxy.fault = None

    assert elapsed < HANG
    trace_id = headers["x-keel-trace-id"]
    if case.status == 200:
        _assert_complete(status, raw, stream)
        traced = (200, None)
        if case.fault.kind == "trickle":
            assert elapsed > READ_TIMEOUT  # the whole answer took longer than one read timeout
    elif stream and case.stream_event:
        _assert_error_event(status, raw, case.stream_event)
        traced = (case.stream_status, case.stream_event)
    else:
        _assert_error(status, headers, raw, case)
        traced = (case.status, case.code)

    assert gateway.recorder.flush(10)
    trace = get_trace(gateway.recorder.store, trace_id)
    assert trace["status"] == traced[0]
    assert (trace["error"] or {}).get("code") == traced[1]

    # Nothing leaks: no connection held by Keel's upstream connector beyond its idle pool, the
    # proxy holds exactly the connections Keel pools, and the loop is back to its tasks.
    connector = provider._session.connector
    assert await _eventually(lambda: not connector._acquired), "a connection is still in use"
    assert await _eventually(lambda: proxy.open == _idle(gateway)), (proxy.open, _idle(gateway))
    assert await _eventually(lambda: len(asyncio.all_tasks()) <= tasks), (
        f"{len(asyncio.all_tasks())} tasks, {tasks} before: {asyncio.all_tasks()}"
    )


def _assert_complete(status: int, raw: bytes, stream: bool) -> None:
    assert status == 200
    if not stream:
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == "ping pong"
        return
    events = _events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"]) == "ping pong"


def _assert_error_event(status: int, raw: bytes, code: str) -> None:
    """A 200 stream that ends with an error event, never [DONE]: not a cut-off answer
    presented as complete."""
    assert status == 200
    events = _events(raw)
    assert b"[DONE]" not in events
    assert len(events) >= 2, events  # at least one chunk went out before the error
    last = orjson.loads(events[-1])
    _assert_openai_error(last)
    assert last["error"]["code"] == code
    assert all("error" not in orjson.loads(e) for e in events[:-1])


def _assert_error(status: int, headers, raw: bytes, case: Case) -> None:
    assert status == case.status, raw
    assert headers["Content-Type"].startswith("application/json")
    body = orjson.loads(raw)
    _assert_openai_error(body)
    assert body["error"]["code"] == case.code
    if case.status == 429:
        assert headers["Retry-After"] == "3"


def _assert_openai_error(body: dict) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def _ask(client: ClientSession, url: str, model: str, stream: bool, got_data=None):
    """(status, headers, body); `got_data` is set once the first bytes of the body arrived."""
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    async with client.post(f"{url}/v1/chat/completions", json=body) as resp:
        raw = bytearray()
        while piece := await resp.content.readany():
            raw += piece
            if got_data is not None:
                got_data.set()
        return resp.status, resp.headers, bytes(raw)


def _events(raw: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]


def _in_use(gateway: Gateway) -> int:
    return sum(len(p._session.connector._acquired) for p in gateway.providers.values())


def _idle(gateway: Gateway) -> int:
    # aiohttp's pool of idle keep-alive connections (private, but the only place to count it).
    return sum(len(conns) for conns in gateway.providers["up"]._session.connector._conns.values())


async def _eventually(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
