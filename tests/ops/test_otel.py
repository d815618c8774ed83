"""Traces as OpenTelemetry spans, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from keel.config import OTLPConfig, TracingConfig
from keel.errors import UpstreamError
from keel.gateway import Gateway
from keel.ops.otel import OTelExporter
from keel.pipeline.trace import Trace
from tests.api.conftest import fake_config
from tests.ops.helpers import make_trace

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET = "my tax id is 123-45-6789"


@pytest.fixture
def exported():
    """(exporter, memory): spans land in `memory` after `exporter.flush()`."""
    memory = InMemorySpanExporter()
    exporter = OTelExporter(
        OTLPConfig(endpoint="http://127.0.0.1:9/v1/traces", service_name="keel-test"),
        span_exporter=memory)
    yield exporter, memory
    exporter.shutdown()


def spans_of(exporter, memory, trace):
    exporter.export(trace)
    assert exporter.flush()
    spans = memory.get_finished_spans()
    memory.clear()
    return {span.name: span for span in spans}


def test_a_chat_is_a_server_span_with_the_gen_ai_attributes(exported):
    exporter, memory = exported
    trace = make_trace(key_id="key_1", session_id="sess-9", user="user-42", cost_usd=0.0021)
    trace.request.update(temperature=0.3, max_tokens=64, seed=7, top_p=0.9)
    trace.response["choices"][0]["finish_reason"] = "stop"
    trace.ttft_ms = 12.5
    root = spans_of(exporter, memory, trace)["chat gpt-4o-mini"]

    assert root.kind is SpanKind.SERVER
    assert root.parent is None  # no traceparent: Keel's span starts the trace
    assert root.resource.attributes["service.name"] == "keel-test"
    attrs = dict(root.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "upstream"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini-2024"
    assert attrs["gen_ai.usage.input_tokens"] == 10
    assert attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.request.seed"] == 7
    assert attrs["gen_ai.request.top_p"] == 0.9
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["http.response.status_code"] == 200
    assert attrs["keel.trace_id"] == trace.id
    assert attrs["keel.key_id"] == "key_1"
    assert attrs["keel.session_id"] == attrs["session.id"] == "sess-9"
    assert attrs["keel.cost_usd"] == 0.0021
    assert attrs["keel.stream"] is False
    assert attrs["keel.ttft_ms"] == 12.5
    assert "error.type" not in attrs
    assert root.status.status_code is StatusCode.UNSET
    # Never the conversation itself on the request's span.
    assert not any("hello 0" in str(v) or "hi 0" in str(v) for v in attrs.values())


def test_the_span_keeps_the_traces_real_times(exported):
    exporter, memory = exported
    trace = make_trace()
    trace.started_at = 1_700_000_000.25
    trace.latency_ms = 250.0
    root = spans_of(exporter, memory, trace)["chat gpt-4o-mini"]
    assert abs(root.start_time - 1_700_000_000_250_000_000) < 1000  # ns, float seconds
    assert root.end_time - root.start_time == 250_000_000


def test_a_traceparent_makes_keels_span_the_callers_child(exported):
    exporter, memory = exported
    trace = make_trace(traceparent=TRACEPARENT)
    spans = spans_of(exporter, memory, trace)
    root = spans["chat gpt-4o-mini"]
    assert format(root.context.trace_id, "032x") == CALLER_TRACE
    assert format(root.parent.span_id, "016x") == CALLER_SPAN
    assert root.parent.is_remote
    # The children are in the caller's trace too.
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {CALLER_TRACE}


@pytest.mark.parametrize("header", [
    "garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    f"00-{CALLER_TRACE}-0000000000000000-01", f"00-{CALLER_TRACE}-{CALLER_SPAN}", "",
])
def test_an_invalid_traceparent_is_ignored(exported, header):
    exporter, memory = exported
    root = spans_of(exporter, memory, make_trace(traceparent=header))["chat gpt-4o-mini"]
    assert root.parent is None
    assert format(root.context.trace_id, "032x") != CALLER_TRACE
    assert exporter.failures == 0


def test_recorded_spans_become_nested_children(exported):
    exporter, memory = exported
    trace = Trace(model="m", provider="fake", upstream_model="echo")
    with trace.span("knowledge"):
        with trace.span("knowledge.retrieve") as retrieve:
            retrieve.attrs.update(collection="docs", hits=3, scores=[0.9, 0.5],
                                  filter={"tags": ["a", "b"], "year": {"gte": 2020}},
                                  mixed=[1, "x"], huge=2**70, nothing=None)
        with trace.span("provider") as provider:
            provider.attrs.update(provider="fake", model="echo")
    trace.finish(200)
    spans = spans_of(exporter, memory, trace)
    root = spans["chat m"]
    assert spans["knowledge"].parent.span_id == root.context.span_id
    assert spans["knowledge.retrieve"].parent.span_id == knowledge_id(spans)
    assert spans["provider"].parent.span_id == knowledge_id(spans)
    assert spans["provider"].kind is SpanKind.CLIENT
    assert spans["knowledge"].kind is SpanKind.INTERNAL
    assert spans["provider"].attributes["gen_ai.request.model"] == "echo"

    attrs = dict(spans["knowledge.retrieve"].attributes)
    assert attrs["keel.collection"] == "docs"
    assert attrs["keel.hits"] == 3
    assert attrs["keel.scores"] == (0.9, 0.5)
    assert attrs["keel.filter.tags"] == ("a", "b")
    assert attrs["keel.filter.year.gte"] == 2020
    assert attrs["keel.mixed"] == '[1, "x"]'
    assert attrs["keel.huge"] == str(2**70)  # beyond OTLP's int64
    assert "keel.nothing" not in attrs

    # Each child is timed from its own start and duration, inside the request's span.
    for name in ("knowledge", "knowledge.retrieve", "provider"):
        recorded = next(s for s in trace.spans if s.name == name)
        span = spans[name]
        assert span.start_time == root.start_time + int(recorded.start_ms * 1e6)
        assert span.end_time - span.start_time == int(recorded.duration_ms * 1e6)
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time + 1_000_000


def knowledge_id(spans):
    return spans["knowledge"].context.span_id


def test_an_error_sets_the_status_and_error_type(exported):
    exporter, memory = exported
    trace = make_trace(status=429)
    trace.error = {"message": f"slow down: {SECRET}", "type": "requests",
                   "code": "rate_limit_exceeded"}
    root = spans_of(exporter, memory, trace)["chat gpt-4o-mini"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == "rate_limit_exceeded"
    assert root.attributes["http.response.status_code"] == 429
    assert SECRET not in (root.status.description or "")  # the message may quote the request


def test_a_stream_and_an_embedding(exported):
    exporter, memory = exported
    stream = make_trace(stream=True)
    stream.response = {"text": "hi", "finish_reason": "length"}  # keel.api.sse's summary
    root = spans_of(exporter, memory, stream)["chat gpt-4o-mini"]
    assert root.attributes["keel.stream"] is True
    assert root.attributes["gen_ai.response.finish_reasons"] == ("length",)

    embed = Trace(endpoint="embeddings", model="minilm", provider="local")
    embed.record_usage({"prompt_tokens": 4, "total_tokens": 4})
    embed.finish(200)
    root = spans_of(exporter, memory, embed)["embeddings minilm"]
    assert root.attributes["gen_ai.operation.name"] == "embeddings"
    assert root.attributes["gen_ai.usage.input_tokens"] == 4


def test_with_bodies_off_no_user_text_reaches_any_attribute():
    memory = InMemorySpanExporter()
    exporter = OTelExporter(OTLPConfig(endpoint="http://127.0.0.1:9/v1/traces"),
                            span_exporter=memory, record_bodies=False)
    try:
        trace = make_trace(status=400, session_id="s1")
        trace.request = {"model": "gpt-4o-mini", "temperature": SECRET, "seed": SECRET,
                         "messages": [{"role": "user", "content": SECRET}]}
        trace.response = {"choices": [{"message": {"content": SECRET}}]}
        trace.error = {"message": f"bad request: {SECRET}", "type": "invalid_request_error",
                       "param": "messages"}
        with trace.span("knowledge.retrieve") as span:
            span.attrs.update(query=SECRET, collection="docs", nested={"q": SECRET, "n": 2},
                              texts=[SECRET, SECRET])
        with trace.span(f"tool:{SECRET}") as span:
            span.attrs["arguments"] = {"city": SECRET}
        unknown = Trace(model=SECRET)  # no route answered: the name is the client's text
        unknown.request = {"model": SECRET, "messages": []}
        unknown.error = {"message": f"The model '{SECRET}' does not exist", "type": "x"}
        unknown.finish(404)
        exporter.export(trace)
        exporter.export(unknown)
        assert exporter.flush()
        spans = memory.get_finished_spans()
        assert len(spans) == (1 + 2 + 2) + 1  # root, make_trace's two, the two above; a root
        for span in spans:
            assert SECRET not in span.name
            assert SECRET not in (span.status.description or "")
            for value in span.attributes.values():
                assert SECRET not in str(value)
        by_name = {s.name: s for s in spans}
        assert by_name["knowledge.retrieve"].attributes["keel.collection"] == "docs"
        assert by_name["knowledge.retrieve"].attributes["keel.nested.n"] == 2
        assert "[redacted]" in by_name  # the tool span's name, which quoted the model
        assert "chat" in by_name  # the unknown model's request span, without the model's name
        assert by_name["chat"].attributes["gen_ai.request.model"] == "[redacted]"
        assert "gen_ai.request.temperature" not in by_name["chat gpt-4o-mini"].attributes
    finally:
        exporter.shutdown()


def test_export_never_raises_and_is_a_no_op_after_shutdown(exported):
    exporter, _ = exported
    broken = make_trace()
    broken.spans.append(object())  # not a Span: building its child fails
    exporter.export(broken)  # logged, counted, not raised
    assert exporter.failures == 1
    exporter.shutdown()
    exporter.export(make_trace())
    assert exporter.failures == 1


def test_without_the_sdk_keel_serve_says_which_extra(tmp_path):
    """A module named `opentelemetry` that fails to import stands in for the missing extra."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "opentelemetry.py").write_text("raise ImportError('no opentelemetry here')\n")
    (tmp_path / "keel.yaml").write_text(
        "providers: {fake: {kind: fake}}\nmodels: {fake/echo: {provider: fake, model: echo}}\n"
        "tracing: {otlp: {endpoint: 'http://127.0.0.1:9/v1/traces'}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "keel", "serve", "--port", "0", "--config", "keel.yaml"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(blocker)}, capture_output=True,
        text=True, timeout=120, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "pip install 'keel-llm[otel]'" in output
    assert "Traceback" not in output


async def test_the_gateway_exports_each_request(tmp_path):
    """Through `Gateway.complete` and the fake provider: the sink sees the finished trace."""
    config = fake_config(tmp_path, tracing=TracingConfig(enabled=False))
    memory = InMemorySpanExporter()
    async with Gateway(config) as gateway:
        exporter = OTelExporter(OTLPConfig(endpoint="http://127.0.0.1:9/v1/traces"),
                                span_exporter=memory)
        gateway.sinks.append(exporter.export)
        trace = Trace(traceparent=TRACEPARENT, session_id="s-1")
        await gateway.complete({"model": "fake/echo", "temperature": 0,
                                "messages": [{"role": "user", "content": "ping"}]}, trace=trace)
        with pytest.raises(UpstreamError):
            await gateway.complete({"model": "fake/error-500",
                                    "messages": [{"role": "user", "content": "ping"}]})
    exporter.shutdown()
    finished = memory.get_finished_spans()
    spans = {s.name: s for s in finished}
    ok = spans["chat fake/echo"]
    assert format(ok.parent.span_id, "016x") == CALLER_SPAN
    assert ok.attributes["gen_ai.provider.name"] == "fake"
    assert ok.attributes["gen_ai.response.model"] == "echo"
    assert ok.attributes["gen_ai.request.temperature"] == 0.0
    assert ok.attributes["gen_ai.usage.output_tokens"] > 0
    assert ok.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert ok.attributes["keel.trace_id"] == trace.id
    def children(span):
        return [s for s in finished if s.parent and s.parent.span_id == span.context.span_id]

    # The default pipeline's json_mode layer wraps the provider call.
    [layer] = children(ok)
    assert layer.name == "json_mode"
    [provider] = children(layer)
    assert provider.name == "provider" and provider.kind is SpanKind.CLIENT
    assert format(provider.context.trace_id, "032x") == CALLER_TRACE
    failed = spans["chat fake/error-500"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["http.response.status_code"] >= 500


def test_a_backend_that_never_answers_neither_blocks_nor_floods_the_log(monkeypatch, caplog):
    """The exporter thread is stuck in `export`; the queue (4 spans here) fills up; `export`
    keeps returning, dropping spans, and the SDK's warning per dropped span is thinned out."""
    import threading

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans):
            release.wait(30)
            return SpanExportResult.SUCCESS

    from keel.ops import otel

    monkeypatch.setattr(otel._sparse, "last", {})  # no earlier warning counts against this one
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    exporter = OTelExporter(OTLPConfig(endpoint="http://127.0.0.1:9/v1/traces"),
                            span_exporter=Stuck())
    try:
        with caplog.at_level(logging.WARNING):
            for n in range(200):
                exporter.export(make_trace(n))  # 3 spans each
        assert exporter.failures == 0
        dropped = [r for r in caplog.records if "Queue full" in r.getMessage()]
        assert 1 <= len(dropped) <= 2  # (at most once a minute; not ~590 times)
    finally:
        release.set()
        exporter.shutdown()


def test_a_caller_that_did_not_sample_is_not_exported(exported):
    exporter, memory = exported
    trace = make_trace(traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")
    assert spans_of(exporter, memory, trace) == {}


def test_whatever_a_layer_records_encodes_as_otlp(exported):
    """Keel builds the spans' attributes itself (the SDK's checks are skipped for speed), so
    every value must be one OTLP can encode, or the whole batch would be lost."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    exporter, memory = exported
    trace = make_trace()
    with trace.span("odd") as span:
        span.attrs.update(
            raw=b"\x00bytes", obj=object(), things={1, 2}, empty=[], nan=float("nan"),
            big=[2**64, 1], nones=[None, 1], deep={"a": {"b": {"c": {"d": {"e": 1}}}}},
            dicts=[{"k": "v"}], text="é" * 10_000, number_keys={1: "one"}, flag=True)
    spans = spans_of(exporter, memory, trace)
    message = ExportTraceServiceRequest.FromString(
        encode_spans(list(spans.values())).SerializeToString())
    encoded = message.resource_spans[0].scope_spans[0].spans
    assert len(encoded) == 4
    attrs = dict(spans["odd"].attributes)
    assert attrs["keel.empty"] == ()
    assert attrs["keel.big"] == "[18446744073709551616, 1]"
    assert attrs["keel.deep.a.b.c"] == '{"d": {"e": 1}}'
    assert attrs["keel.number_keys.1"] == "one"
    assert len(attrs["keel.text"]) == 4096
    assert attrs["keel.flag"] is True
