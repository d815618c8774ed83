"""End to end: a real `keel serve` exports its traces over OTLP/HTTP to a real receiver."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.otlp_receiver import OTLPReceiver
from tests.servers import http, keel_server

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # Status.StatusCode

CONFIG = """
store: {{url: "sqlite:///{db}"}}
tracing:
  flush_interval_s: 0.05
  otlp: {{endpoint: "{endpoint}", service_name: keel-e2e, headers: {{x-tenant: team-a}}}}
providers: {{fake: {{kind: fake}}}}
embedders: {{minilm: {{kind: fake}}}}
models:
  fake/echo: {{provider: fake, model: echo}}
  fake/error-500: {{provider: fake, model: error-500}}
"""


def traceparent(span: str = CALLER_SPAN) -> str:
    return f"00-{CALLER_TRACE}-{span}-01"


def chat(base: str, model: str, headers: dict, **body):
    return http("POST", f"{base}/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": "hello otel"}], **body,
    }, headers)


def stream(base: str, headers: dict) -> str:
    request = urllib.request.Request(f"{base}/chat/completions", method="POST", data=json.dumps({
        "model": "fake/echo", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "stream me"}]}).encode(),
        headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, receiver) of a `keel serve` that batches spans every 100 ms, gzipped."""
    tmp = tmp_path_factory.mktemp("otel")
    with OTLPReceiver() as receiver:
        config = CONFIG.format(db=(tmp / "keel.db").as_posix(), endpoint=receiver.endpoint)
        env = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip"}
        with keel_server(tmp, config, env=env) as base:
            yield base, receiver


def test_a_chat_with_a_traceparent_joins_the_callers_trace(served):
    base, receiver = served
    status, headers, body = chat(base, "fake/echo", {"traceparent": traceparent(),
                                                     "x-keel-session-id": "sess-e2e"},
                                 temperature=0.2, max_tokens=50, user="end-user-1")
    assert status == 200
    keel_trace = headers["x-keel-trace-id"]
    span = receiver.wait_for(lambda s: s.attributes.get("keel.trace_id") == keel_trace)

    assert span.name == "chat fake/echo"
    assert span.kind == SERVER
    assert span.trace_id == CALLER_TRACE
    assert span.parent_span_id == CALLER_SPAN
    assert span.resource["service.name"] == "keel-e2e"
    attrs = span.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "fake"
    assert attrs["gen_ai.request.model"] == "fake/echo"
    assert attrs["gen_ai.response.model"] == "echo"
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["http.response.status_code"] == 200
    assert attrs["keel.session_id"] == attrs["session.id"] == "sess-e2e"
    assert attrs["user.id"] == "end-user-1"
    assert attrs["keel.stream"] is False
    assert "hello otel" not in json.dumps(attrs)
    assert span.start_ns < span.end_ns

    # The provider call is a CLIENT span below Keel's, in the caller's trace.
    def children(parent):
        return [s for s in receiver.received() if s.parent_span_id == parent.span_id]

    layer = receiver.wait_for(lambda s: s.parent_span_id == span.span_id)
    provider = receiver.wait_for(lambda s: s.parent_span_id == layer.span_id)
    assert provider.name == "provider" and provider.kind == CLIENT
    assert provider.trace_id == CALLER_TRACE
    assert len(children(span)) == 1
    # The exporter sent the configured header, gzipped (the receiver decoded it).
    assert any(h.get("x-tenant") == "team-a" and h.get("Content-Encoding") == "gzip"
               for h in receiver.requests)


def test_a_stream_is_exported_when_it_ends(served):
    base, receiver = served
    text = stream(base, {"traceparent": traceparent("00000000000000a1")})
    assert "[DONE]" in text
    span = receiver.wait_for(
        lambda s: s.parent_span_id == "00000000000000a1" and s.kind == SERVER)
    assert span.trace_id == CALLER_TRACE
    assert span.attributes["keel.stream"] is True
    assert span.attributes["gen_ai.usage.output_tokens"] > 0
    assert span.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert span.attributes["keel.ttft_ms"] > 0
    assert "stream me" not in json.dumps(span.attributes)


def test_an_upstream_error_is_an_error_span(served):
    base, receiver = served
    status, headers, _ = chat(base, "fake/error-500", {"traceparent": traceparent("00000000000000b2")})
    assert status >= 500
    span = receiver.wait_for(lambda s: s.parent_span_id == "00000000000000b2")
    assert span.status_code == ERROR
    assert span.attributes["http.response.status_code"] == status
    assert span.attributes["error.type"]
    assert span.attributes["keel.trace_id"] == headers["x-keel-trace-id"]


def test_an_invalid_traceparent_starts_a_trace_of_its_own(served):
    base, receiver = served
    status, headers, _ = chat(base, "fake/echo", {"traceparent": "00-not-a-trace-01"})
    assert status == 200
    keel_trace = headers["x-keel-trace-id"]
    span = receiver.wait_for(lambda s: s.attributes.get("keel.trace_id") == keel_trace)
    assert span.parent_span_id is None
    assert span.trace_id != CALLER_TRACE


def test_embeddings_are_exported(served):
    base, receiver = served
    status, headers, _ = http("POST", f"{base}/embeddings", {"model": "minilm", "input": ["a"]})
    assert status == 200
    keel_trace = headers["x-keel-trace-id"]
    span = receiver.wait_for(lambda s: s.attributes.get("keel.trace_id") == keel_trace)
    assert span.name == "embeddings minilm"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"


def test_stopping_the_server_flushes_what_is_queued(tmp_path):
    """With the SDK's default 5 s batch delay (here a minute), the span still goes out when
    `keel serve` stops: `Gateway.close` shuts the exporter down, which flushes."""
    with OTLPReceiver() as receiver:
        config = CONFIG.format(db=(tmp_path / "keel.db").as_posix(), endpoint=receiver.endpoint)
        with keel_server(tmp_path, config, env={"OTEL_BSP_SCHEDULE_DELAY": "60000"}) as base:
            status, headers, _ = chat(base, "fake/echo", {"traceparent": traceparent()})
            assert status == 200
        keel_trace = headers["x-keel-trace-id"]
        span = receiver.wait_for(lambda s: s.attributes.get("keel.trace_id") == keel_trace,
                                 timeout=10)
        assert span.parent_span_id == CALLER_SPAN
