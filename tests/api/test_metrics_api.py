"""GET /metrics on a real `keel serve` (fake provider): what a Prometheus scrape reads after
successes, a stream, an unknown model and an upstream failure, parsed with the client's parser."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from keel.api import create_app
from keel.config import MetricsConfig
from keel.gateway import Gateway
from tests.api.conftest import fake_config
from tests.ops.test_metrics import samples, value
from tests.servers import http, keel_server

INPUT_USD, OUTPUT_USD = 2.0, 8.0  # per million tokens
CONFIG = f"""
providers:
  fake: {{kind: fake}}
models:
  fake/echo: {{provider: fake, model: echo, pricing: {{input: {INPUT_USD}, output: {OUTPUT_USD}}}}}
  fake/error-500: {{provider: fake, model: error-500}}
"""
ECHO = {"endpoint": "chat.completions", "model": "fake/echo", "provider": "fake"}


def scrape(root: str) -> tuple[dict, str]:
    with urllib.request.urlopen(f"{root}/metrics", timeout=30) as response:
        assert response.status == 200
        return samples(response.read()), response.headers["Content-Type"]


def chat(base: str, model: str, text: str, **extra):
    return http("POST", f"{base}/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": text}], **extra})


def stream_usage(base: str, text: str) -> dict:
    body = {"model": "fake/echo", "messages": [{"role": "user", "content": text}],
            "stream": True, "stream_options": {"include_usage": True}}
    request = urllib.request.Request(f"{base}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [line[6:] for line in response.read().decode().splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    return [json.loads(e) for e in events if json.loads(e).get("usage")][-1]["usage"]


def test_a_scrape_counts_what_was_served(tmp_path):
    texts = ["one", "two words", "three little words", "and four more words"]
    with keel_server(tmp_path, CONFIG) as base:
        root = base.removesuffix("/v1")
        usages = []
        for text in texts:
            status, _, body = chat(base, "fake/echo", text)
            assert status == 200
            usages.append(body["usage"])
        usages.append(stream_usage(base, "a streamed answer"))
        missing_status, _, missing = chat(base, "no/such-model", "hello")
        failed_status, _, failed = chat(base, "fake/error-500", "hello")

        found, content_type = scrape(root)
        assert content_type.startswith("text/plain; version=0.0.4")
        assert value(found, "keel_requests_total", **ECHO, status="200") == len(texts) + 1
        assert value(found, "keel_request_duration_seconds_count", **ECHO) == len(texts) + 1
        assert value(found, "keel_request_duration_seconds_bucket", **ECHO,
                     le="+Inf") == len(texts) + 1
        assert value(found, "keel_time_to_first_token_seconds_count", **ECHO) == 1

        prompt = sum(u["prompt_tokens"] for u in usages)
        completion = sum(u["completion_tokens"] for u in usages)
        assert value(found, "keel_tokens_total", **ECHO, type="prompt") == prompt
        assert value(found, "keel_tokens_total", **ECHO, type="completion") == completion
        assert value(found, "keel_cost_usd_total", **ECHO) == pytest.approx(
            (prompt * INPUT_USD + completion * OUTPUT_USD) / 1e6)

        # The unknown model is counted under `other`, whatever name the client sent.
        assert missing_status == 404
        other = {"endpoint": "chat.completions", "model": "other", "provider": "none"}
        assert value(found, "keel_requests_total", **other, status="404") == 1
        assert value(found, "keel_errors_total", endpoint="chat.completions",
                     type=missing["error"]["type"], code=missing["error"]["code"]) == 1
        assert not any("no/such-model" in str(labels) for _, labels in found)

        failing = {"endpoint": "chat.completions", "model": "fake/error-500", "provider": "fake"}
        assert failed_status >= 500
        assert value(found, "keel_requests_total", **failing, status=str(failed_status)) == 1
        assert value(found, "keel_errors_total", endpoint="chat.completions",
                     type=failed["error"]["type"], code=failed["error"]["code"]) == 1
        assert value(found, "keel_cost_usd_total", **failing) is None  # no pricing, no usage

        # The trace writer's figures: every request's trace ends up written.
        served = len(texts) + 3
        deadline = time.monotonic() + 30
        while value(found, "keel_trace_writer_written_total") != served:
            assert time.monotonic() < deadline, found.get(("keel_trace_writer_written_total",
                                                             frozenset()))
            time.sleep(0.2)
            found, _ = scrape(root)
        assert value(found, "keel_trace_writer_pending") == 0
        assert value(found, "keel_trace_writer_dropped_total") == 0
        assert value(found, "keel_trace_writer_errors_total") == 0
        assert value(found, "process_resident_memory_bytes") > 0


@pytest.fixture
async def serve(tmp_path):
    servers = []

    async def start(**overrides) -> tuple[str, Gateway]:
        gateway = Gateway(fake_config(tmp_path, **overrides))
        server = TestServer(create_app(gateway), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), gateway

    yield start
    for server in servers:
        await server.close()


async def test_metrics_disabled_answers_404_in_the_openai_shape(serve, session):
    root, gateway = await serve(metrics=MetricsConfig(enabled=False))
    async with session.get(f"{root}/metrics") as response:
        body = await response.json()
    assert response.status == 404
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert "metrics.enabled" in body["error"]["message"]
    # Nor are requests counted: the gateway never wired the sink.
    async with session.post(f"{root}/v1/chat/completions", json={
            "model": "fake/echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    assert gateway.runtime.metrics.observe not in gateway.sinks


async def test_a_layer_counter_shows_in_the_scrape(serve, session):
    root, gateway = await serve()
    hits = gateway.runtime.metrics.counter("keel_cache_hits_total", "Cache hits", ["model"])
    hits.labels("fake/echo").inc(2)
    async with session.get(f"{root}/metrics",
                           headers={"Accept": "application/openmetrics-text"}) as response:
        text = await response.text()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in openmetrics_families(text) for s in family.samples}
    assert value(found, "keel_cache_hits_total", model="fake/echo") == 2
