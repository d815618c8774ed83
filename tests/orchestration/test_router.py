"""The router over real sockets: Keel (aiohttp TestServer) -> providers of kind `openai` ->
`keel fake-upstream` (its error-*, flaky-<n> and slow-* models), some through the fault-injecting
proxy (tests/faults/proxy.py), one at a port where nothing listens.

Timings are small (backoff of milliseconds, a breaker cooldown of half a second) and every
wait on them has a generous margin; no test asserts how fast anything was.
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig
from keel.gateway import Gateway
from keel.ops.trace_queries import get_trace
from keel.providers.fake import FakeOptions
from keel.providers.fake_server import serve_fake_upstream
from tests.faults.proxy import Fault, run_proxy

MESSAGES = [{"role": "user", "content": "ping pong"}]
FAST = {"initial_s": 0.01, "max_s": 1.0, "jitter": True}
HEAVY, LIGHT = 1e6, 1e-6  # weights that make the order certain (odds of 1e-12 otherwise)


@pytest.fixture
def upstream():
    with serve_fake_upstream() as url:
        yield url


@asynccontextmanager
async def keel(tmp_path, providers: dict[str, str], models: dict):
    """(base URL, gateway) of a Keel whose providers (name -> base URL) are `openai` ones."""
    timeouts = {"read_timeout": 5.0, "connect_timeout": 2.0}
    config = KeelConfig.model_validate({
        "state_dir": str(tmp_path),
        "providers": {name: {"kind": "openai", "base_url": url, **timeouts}
                      for name, url in providers.items()},
        "models": models,
    })
    gateway = Gateway(config)
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), gateway
    finally:
        await server.close()


async def ask(url: str, model: str, stream: bool = False, got_data=None):
    """(status, headers, raw body); `got_data` is set once the first bytes arrived."""
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    async with ClientSession() as client, client.post(
            f"{url}/v1/chat/completions", json=body) as resp:
        raw = bytearray()
        while piece := await resp.content.readany():
            raw += piece
            if got_data is not None:
                got_data.set()
        return resp.status, resp.headers, bytes(raw)


async def metrics(url: str) -> str:
    async with ClientSession() as client, client.get(f"{url}/metrics") as resp:
        return await resp.text()


def attempts_on_trace(gateway: Gateway, trace_id: str) -> list[dict]:
    assert gateway.recorder.flush(10)
    trace = get_trace(gateway.recorder.store, trace_id)
    return [s["attrs"] for s in trace["spans"] if s["name"] == "router.attempt"]


def events(raw: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]


def streamed_text(raw: bytes) -> str:
    chunks = [orjson.loads(e) for e in events(raw) if e != b"[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def router(*deployments, **options) -> dict:
    return {"router": {"deployments": list(deployments), "backoff": FAST, **options}}


# -- retries -----------------------------------------------------------------------------------


async def test_retries_then_success_with_the_attempts_on_the_trace(upstream, tmp_path):
    models = {"chat": router({"provider": "up", "model": "flaky-2"}, retries=2)}
    async with keel(tmp_path, {"up": upstream}, models) as (url, gateway):
        status, headers, raw = await ask(url, "chat")
        assert status == 200, raw
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == "ping pong"
        assert headers["x-keel-attempts"] == "3"
        assert headers["x-keel-provider"] == "up" and headers["x-keel-model"] == "flaky-2"
        spans = attempts_on_trace(gateway, headers["x-keel-trace-id"])
        assert [(s["attempt"], s["outcome"], s["status"]) for s in spans] == [
            (1, "error", 502), (2, "error", 502), (3, "ok", 200)]
        assert spans[0]["wait_s"] == 0 and all(s["deployment"] == "up/flaky-2" for s in spans)
        text = await metrics(url)
        assert 'keel_router_retries_total{deployment="up/flaky-2"} 2.0' in text
        assert 'keel_router_attempts_total{deployment="up/flaky-2",outcome="error"} 2.0' in text
        assert 'keel_router_attempts_total{deployment="up/flaky-2",outcome="ok"} 1.0' in text


async def test_a_client_error_is_not_retried(upstream, tmp_path):
    models = {"chat": router({"provider": "up", "model": "error-400"},
                             {"provider": "up2", "model": "echo", "weight": LIGHT}, retries=3)}
    async with keel(tmp_path, {"up": upstream, "up2": upstream}, models) as (url, _):
        status, headers, raw = await ask(url, "chat")
    assert status == 400
    assert set(orjson.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert headers["x-keel-attempts"] == "1"


async def test_retry_after_is_waited_and_the_last_error_is_raised(tmp_path):
    with serve_fake_upstream(options=FakeOptions(retry_after="0.3")) as upstream:
        models = {"chat": router({"provider": "up", "model": "error-429"}, retries=1)}
        async with keel(tmp_path, {"up": upstream}, models) as (url, gateway):
            started = time.monotonic()
            status, headers, raw = await ask(url, "chat")
            elapsed = time.monotonic() - started
            assert status == 429
            assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"
            assert headers["x-keel-attempts"] == "2"
            spans = attempts_on_trace(gateway, headers["x-keel-trace-id"])
            assert [s["wait_s"] for s in spans] == [0, 0.3]  # Retry-After, not the backoff
            assert elapsed >= 0.3


async def test_a_retry_after_longer_than_max_s_moves_on_at_once(upstream, tmp_path):
    # The fake's Retry-After is 7 s, over backoff.max_s (1 s): the next deployment answers.
    models = {"chat": router({"provider": "up", "model": "error-429", "weight": HEAVY},
                             {"provider": "up2", "model": "echo", "weight": LIGHT}, retries=2)}
    async with keel(tmp_path, {"up": upstream, "up2": upstream}, models) as (url, _):
        status, headers, raw = await ask(url, "chat")
    assert status == 200, raw
    assert headers["x-keel-attempts"] == "2"
    assert headers["x-keel-provider"] == "up2"


# -- fallbacks ---------------------------------------------------------------------------------


async def test_fallback_to_a_second_deployment_on_an_outage(upstream, tmp_path):
    models = {"chat": router({"provider": "down", "model": "echo", "weight": HEAVY},
                             {"provider": "up", "model": "echo", "weight": LIGHT}, retries=1)}
    providers = {"down": closed_port_url(), "up": upstream}
    async with keel(tmp_path, providers, models) as (url, gateway):
        status, headers, raw = await ask(url, "chat")
        assert status == 200, raw
        assert headers["x-keel-provider"] == "up"
        assert headers["x-keel-attempts"] == "3"  # down twice (1 retry), then up
        spans = attempts_on_trace(gateway, headers["x-keel-trace-id"])
        assert [(s["deployment"], s["outcome"]) for s in spans] == [
            ("down/echo", "error"), ("down/echo", "error"), ("up/echo", "ok")]
        assert 'keel_router_fallbacks_total{model="chat",to="up/echo"} 1.0' in await metrics(url)


async def test_fallback_when_the_connection_is_reset(upstream, tmp_path):
    with run_proxy(upstream.removesuffix("/v1")) as proxy:
        proxy.fault = Fault("reset_mid_body")
        models = {"chat": router({"provider": "flaky", "model": "echo", "weight": HEAVY},
                                 {"provider": "up", "model": "echo", "weight": LIGHT},
                                 retries=0)}
        providers = {"flaky": proxy.base_url, "up": upstream}
        async with keel(tmp_path, providers, models) as (url, _):
            status, headers, raw = await ask(url, "chat")
    assert status == 200, raw
    assert headers["x-keel-provider"] == "up" and headers["x-keel-attempts"] == "2"
    assert proxy.requests == 1


async def test_fallback_to_another_model(upstream, tmp_path):
    models = {
        "chat": router({"provider": "down", "model": "echo"}, retries=0, fallbacks=["backup"]),
        "backup": {"provider": "up", "model": "fixed:from the backup"},
    }
    async with keel(tmp_path, {"down": closed_port_url(), "up": upstream}, models) as (url, _):
        status, headers, raw = await ask(url, "chat")
    assert status == 200, raw
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "from the backup"
    assert headers["x-keel-provider"] == "up"
    assert headers["x-keel-model"] == "fixed:from the backup"
    assert headers["x-keel-attempts"] == "2"


async def test_everything_failing_raises_the_last_upstream_error(upstream, tmp_path):
    models = {"chat": router({"provider": "down", "model": "echo", "weight": HEAVY},
                             {"provider": "up", "model": "error-503", "weight": LIGHT},
                             retries=1)}
    async with keel(tmp_path, {"down": closed_port_url(), "up": upstream}, models) as (url, gw):
        status, headers, raw = await ask(url, "chat")
        assert status == 502
        error = orjson.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "upstream_error" and "503" in error["message"]
        assert headers["x-keel-attempts"] == "4"
        spans = attempts_on_trace(gw, headers["x-keel-trace-id"])
        assert [s["deployment"] for s in spans] == ["down/echo"] * 2 + ["up/error-503"] * 2


# -- the circuit breaker -----------------------------------------------------------------------


async def test_breaker_opens_probes_back_and_closes(upstream, tmp_path):
    cooldown = 0.5
    with run_proxy(upstream.removesuffix("/v1")) as proxy:
        proxy.fault = Fault("status", 500)
        models = {"chat": router(
            {"provider": "a", "model": "echo", "weight": HEAVY},
            {"provider": "b", "model": "echo", "weight": LIGHT},
            retries=0, breaker={"failures": 2, "window_s": 60, "cooldown_s": cooldown})}
        async with keel(tmp_path, {"a": proxy.base_url, "b": upstream}, models) as (url, _):
            for _ in range(2):  # two failures on a: its circuit opens
                status, headers, _raw = await ask(url, "chat")
                assert (status, headers["x-keel-provider"], headers["x-keel-attempts"]) == (
                    200, "b", "2")
            seen = proxy.requests
            status, headers, _raw = await ask(url, "chat")  # open: a is skipped
            assert (headers["x-keel-provider"], headers["x-keel-attempts"]) == ("b", "1")
            assert proxy.requests == seen

            await asyncio.sleep(cooldown * 3)
            status, headers, _raw = await ask(url, "chat")  # the probe fails: open again
            assert (headers["x-keel-provider"], headers["x-keel-attempts"]) == ("b", "2")
            assert proxy.requests == seen + 1
            status, headers, _raw = await ask(url, "chat")
            assert headers["x-keel-attempts"] == "1" and proxy.requests == seen + 1

            proxy.fault = None  # a recovers
            await asyncio.sleep(cooldown * 3)
            status, headers, _raw = await ask(url, "chat")  # the probe succeeds: closed
            assert (status, headers["x-keel-provider"], headers["x-keel-attempts"]) == (
                200, "a", "1")
            status, headers, _raw = await ask(url, "chat")
            assert headers["x-keel-provider"] == "a"
            text = await metrics(url)
    moves = {to: f'keel_router_breaker_transitions_total{{deployment="a/echo",to="{to}"}}'
             for to in ("open", "half_open", "closed")}
    assert f"{moves['open']} 2.0" in text
    assert f"{moves['half_open']} 2.0" in text
    assert f"{moves['closed']} 1.0" in text


# -- streams -----------------------------------------------------------------------------------


async def test_a_stream_failing_before_its_first_token_falls_back(upstream, tmp_path):
    models = {"chat": router({"provider": "up", "model": "error-500", "weight": HEAVY},
                             {"provider": "up2", "model": "echo", "weight": LIGHT}, retries=0)}
    async with keel(tmp_path, {"up": upstream, "up2": upstream}, models) as (url, _):
        status, headers, raw = await ask(url, "chat", stream=True)
    assert status == 200, raw
    assert events(raw)[-1] == b"[DONE]"
    assert streamed_text(raw) == "ping pong"
    assert headers["x-keel-provider"] == "up2" and headers["x-keel-attempts"] == "2"


async def test_a_stream_whose_headers_never_come_times_out_and_falls_back(upstream, tmp_path):
    with run_proxy(upstream.removesuffix("/v1")) as proxy:
        proxy.fault = Fault("slow_headers")
        models = {"chat": router({"provider": "a", "model": "echo", "weight": HEAVY},
                                 {"provider": "b", "model": "echo", "weight": LIGHT},
                                 retries=0, timeout_s=0.5)}
        async with keel(tmp_path, {"a": proxy.base_url, "b": upstream}, models) as (url, gw):
            status, headers, raw = await ask(url, "chat", stream=True)
            assert status == 200, raw
            assert streamed_text(raw) == "ping pong"
            assert headers["x-keel-provider"] == "b"
            spans = attempts_on_trace(gw, headers["x-keel-trace-id"])
            assert [(s["outcome"], s["status"]) for s in spans] == [("error", 504), ("ok", 200)]


async def test_a_stream_failing_after_its_first_token_ends_with_an_error_event(upstream, tmp_path):
    with run_proxy(upstream.removesuffix("/v1")) as proxy:
        proxy.fault = Fault("reset_after_chunks", after=2)
        proxy.client_got_data.clear()
        models = {"chat": router({"provider": "a", "model": "echo", "weight": HEAVY},
                                 {"provider": "b", "model": "echo", "weight": LIGHT})}
        async with keel(tmp_path, {"a": proxy.base_url, "b": upstream}, models) as (url, _):
            status, headers, raw = await ask(url, "chat", stream=True,
                                             got_data=proxy.client_got_data)
    assert status == 200
    assert headers["x-keel-provider"] == "a" and headers["x-keel-attempts"] == "1"
    found = events(raw)
    assert b"[DONE]" not in found
    last = orjson.loads(found[-1])
    assert last["error"]["code"] == "upstream_error"
    assert all("error" not in orjson.loads(e) for e in found[:-1])


# -- selection ---------------------------------------------------------------------------------


async def test_weighted_selection_follows_the_weights(upstream, tmp_path):
    models = {"chat": router({"provider": "east", "model": "echo", "weight": 3},
                             {"provider": "west", "model": "echo", "weight": 1})}
    async with keel(tmp_path, {"east": upstream, "west": upstream}, models) as (url, _):
        answered = [(await ask(url, "chat"))[1]["x-keel-provider"] for _ in range(60)]
    share = answered.count("east") / len(answered)
    assert 0.5 <= share <= 0.95, share  # expected 0.75; each bound is over 4 standard deviations


async def test_least_busy_prefers_the_idle_deployment(upstream, tmp_path):
    models = {"chat": router({"provider": "east", "model": "slow-1500"},
                             {"provider": "west", "model": "slow-1500"},
                             strategy="least_busy")}
    async with keel(tmp_path, {"east": upstream, "west": upstream}, models) as (url, gateway):
        in_flight = gateway.runtime.shared["router.in_flight"]
        first = asyncio.create_task(ask(url, "chat"))
        deadline = time.monotonic() + 10
        while sum(in_flight.values()) < 1:
            assert time.monotonic() < deadline, "the first request never reached a deployment"
            await asyncio.sleep(0.01)
        busy = next(name for name, n in in_flight.items() if n)
        _, headers, _ = await ask(url, "chat")
        _, first_headers, _ = await first
    assert f"{first_headers['x-keel-provider']}/slow-1500" == busy
    assert headers["x-keel-provider"] != first_headers["x-keel-provider"]
