"""Export every finished trace as OpenTelemetry spans over OTLP/HTTP (docs/opentelemetry.md).

One request becomes one SERVER span named as the GenAI semantic conventions name an inference
("chat gpt-4o-mini"), with the `gen_ai.*` attributes, the HTTP status and Keel's own (`keel.*`);
each span Keel recorded on the way (a layer, the provider call, a tool) becomes a child, nested
as it was. A caller's W3C `traceparent` header makes that SERVER span a child of the caller's.

The spans are built after the fact from the finished `Trace`, with its real start and end
times, so nothing here runs while the request does. `export` runs on the event loop: building
the spans costs ~12 µs plus ~5 µs per recorded step, and the SDK's batch processor only queues
them — a thread of its own sends them, and drops them when its queue is full rather than wait. The SDK is imported
here only, so Keel without the `otel` extra never loads it.

No prompt or completion text goes on a span from the request itself: only its parameters
(temperature, max tokens…), counts and names. With `tracing.record_bodies: false` the child
spans' attributes go through the same `keel.ops.privacy` reduction as the stored trace.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from keel.config import OTLPConfig
from keel.errors import ConfigError
from keel.messages import finish_reasons
from keel.ops.privacy import REDACTED, redact_span

try:  # the `otel` extra; Keel imports this module only when tracing.otlp is set
    from opentelemetry.context import Context
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        get_current_span,
        set_span_in_context,
    )
    from opentelemetry.trace.propagation.tracecontext import (
        TraceContextTextMapPropagator,
    )
except ImportError as exc:  # raised as a ConfigError when an exporter is asked for
    _MISSING: str | None = exc.name or str(exc)
else:
    _MISSING = None
    _EMPTY = Context()
    _UNSET = Status(StatusCode.UNSET)

log = logging.getLogger("keel.otel")

# Keel endpoint -> gen_ai.operation.name
OPERATIONS = {"chat.completions": "chat", "embeddings": "embeddings"}

# Request parameters copied when the client set them to a number (never strings: a request
# refused as invalid may carry anything there, including text).
_PARAMS = (
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("seed", "gen_ai.request.seed"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
)

_MAX_STR = 4096  # one attribute's text; a span's attrs are for debugging, not for bodies
_MAX_ATTRS = 64  # per child span, after flattening
_INT64 = (-(2**63), 2**63 - 1)  # OTLP's int type: a larger int would fail the whole batch


class _Sparse(logging.Filter):
    """The SDK warns once for every span it drops from a full queue: with the backend away under
    load that is thousands of lines a second, written on the event loop. Once a minute (for
    each message) says as much."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        key = str(record.msg)
        if now - self.last.get(key, -math.inf) < self.interval_s:
            return False
        self.last[key] = now
        return True


# Where the batch processor logs a full queue (its module moved between SDK versions).
_SDK_LOGGERS = ("opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")
_sparse = _Sparse()


class OTelExporter:
    """Turns finished traces into spans and hands them to a `BatchSpanProcessor`.

    `span_exporter` replaces the OTLP/HTTP one (tests pass the SDK's `InMemorySpanExporter`).
    The batch processor's schedule and queue follow the SDK's `OTEL_BSP_*` environment
    variables, the exporter's compression `OTEL_EXPORTER_OTLP_COMPRESSION`.
    """

    def __init__(self, config: OTLPConfig, span_exporter=None, record_bodies: bool = True) -> None:
        if _MISSING is not None:
            raise ConfigError(
                "tracing.otlp needs the OpenTelemetry SDK and its OTLP exporter, which are not "
                f"installed ({_MISSING}): pip install 'keel-llm[otel]'")
        from keel import __version__

        if span_exporter is None:
            span_exporter = OTLPSpanExporter(
                endpoint=config.endpoint, headers=dict(config.headers), timeout=config.timeout_s)
        for name in _SDK_LOGGERS:
            logger = logging.getLogger(name)
            if _sparse not in logger.filters:
                logger.addFilter(_sparse)
        self.record_bodies = record_bodies
        # The provider holds the resource, the sampler (OTEL_TRACES_SAMPLER) and the ids; the
        # batch processor queues finished spans for its export thread.
        self.provider = TracerProvider(resource=Resource.create({
            "service.name": config.service_name, "service.version": __version__}))
        self.processor = BatchSpanProcessor(span_exporter)
        self.provider.add_span_processor(self.processor)
        self._scope = InstrumentationScope("keel", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self.failures = 0
        self._closed = False

    def export(self, trace) -> None:
        """Queue `trace` as spans. Never raises: tracing must not fail a request."""
        if self._closed:
            return
        try:
            self._export(trace)
        except Exception:
            self.failures += 1
            if self.failures == 1:  # once: a broken trace shape would otherwise flood the log
                log.exception("exporting trace %s to OpenTelemetry failed", trace.id)

    # The spans are finished ones, with known times: rather than open and end SDK spans (whose
    # attribute checks cost ~25 µs a span on the event loop), they are built as `ReadableSpan`s,
    # the SDK's record of a finished span, from attributes this module already made legal, and
    # handed to the batch processor as the SDK's own `Span.end` would. ~5x cheaper.
    def _export(self, trace) -> None:
        parent = self._parent(trace.traceparent)
        ids = self.provider.id_generator
        trace_id = parent.trace_id if parent is not None else ids.generate_trace_id()
        operation = OPERATIONS.get(trace.endpoint, trace.endpoint)
        model = trace.model
        if model is not None and not self.record_bodies and trace.provider is None:
            model = None  # no route answered to it: it is whatever the client typed
        name = f"{operation} {_clip(str(model), 200)}" if model else operation
        attrs = self._root_attributes(trace, operation, model)
        sampling = self.provider.sampler.should_sample(
            self._parent_context(parent), trace_id, name, SpanKind.SERVER, attrs)
        if not sampling.decision.is_sampled():  # e.g. the caller's traceparent said not sampled
            return
        if sampling.attributes:  # what a configured sampler adds (the default adds none)
            attrs.update(sampling.attributes)
        flags = TraceFlags(TraceFlags.SAMPLED)
        whole = int(trace.started_at)  # (a float of ns since 1970 would lose the last µs)
        start = whole * 1_000_000_000 + round((trace.started_at - whole) * 1e9)
        root = SpanContext(trace_id, ids.generate_span_id(), False, flags, sampling.trace_state)
        status = _UNSET
        if (trace.status or 0) >= 400:
            # The error's code or type, never its message: a message may quote the request.
            status = Status(StatusCode.ERROR, attrs["error.type"])
        if trace.spans:
            self._children(trace, root, start, operation)
        self._emit(name, root, parent, SpanKind.SERVER, attrs, start,
                   start + int((trace.latency_ms or 0.0) * 1e6), status)

    def _emit(self, name, context, parent, kind, attrs, start: int, end: int, status) -> None:
        self.processor.on_end(ReadableSpan(
            name=name, context=context, parent=parent, resource=self.provider.resource,
            attributes=attrs, kind=kind, instrumentation_scope=self._scope, status=status,
            start_time=start, end_time=end))

    def _parent(self, traceparent):
        """The caller's span context, or None (no header, or an invalid one: ignored)."""
        if not traceparent or not isinstance(traceparent, str):
            return None
        context = self._propagator.extract({"traceparent": traceparent}, context=_EMPTY)
        span_context = get_current_span(context).get_span_context()
        return span_context if span_context.is_valid else None

    @staticmethod
    def _parent_context(parent):
        if parent is None:
            return _EMPTY
        return set_span_in_context(NonRecordingSpan(parent), _EMPTY)

    def _root_attributes(self, trace, operation: str, model: str | None) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "keel.trace_id": trace.id,
            "keel.endpoint": trace.endpoint,
            "keel.stream": bool(trace.stream),
        }
        if model is not None:
            attrs["gen_ai.request.model"] = _clip(str(model), 200)
        elif trace.model is not None:
            attrs["gen_ai.request.model"] = REDACTED
        if trace.provider is not None:
            attrs["gen_ai.provider.name"] = attrs["gen_ai.system"] = str(trace.provider)
        if trace.upstream_model is not None:
            attrs["gen_ai.response.model"] = _clip(str(trace.upstream_model), 200)
        _number(attrs, "gen_ai.usage.input_tokens", trace.prompt_tokens, int)
        _number(attrs, "gen_ai.usage.output_tokens", trace.completion_tokens, int)
        request = trace.request
        if isinstance(request, dict):
            for key, name in _PARAMS:
                _number(attrs, name, request.get(key), int if key in ("seed", "max_tokens",
                        "max_completion_tokens") else float)
        response = trace.response
        if isinstance(response, dict):
            reasons = finish_reasons(response)
            if reasons:
                attrs["gen_ai.response.finish_reasons"] = tuple(reasons)
            if isinstance(response.get("id"), str):
                attrs["gen_ai.response.id"] = _clip(response["id"], 200)
        if trace.status is not None:
            attrs["http.response.status_code"] = trace.status
            if trace.status >= 400:
                error = trace.error if isinstance(trace.error, dict) else {}
                attrs["error.type"] = _clip(_error_type(error, trace.status), 200)
        if trace.key_id is not None:
            attrs["keel.key_id"] = str(trace.key_id)
        if trace.key_metadata:
            for key, value in list(trace.key_metadata.items())[:16]:
                if isinstance(value, (str, bool, int, float)):
                    attrs[f"keel.key_metadata.{key}"] = _scalar(value)
        if trace.session_id is not None:
            attrs["keel.session_id"] = attrs["session.id"] = _clip(trace.session_id, 256)
        if trace.user is not None:  # the end user's id, the client's own label (not content)
            attrs["keel.user"] = attrs["user.id"] = _clip(str(trace.user), 256)
        _number(attrs, "keel.cost_usd", trace.cost_usd, float)
        _number(attrs, "keel.ttft_ms", trace.ttft_ms, float)
        _number(attrs, "keel.latency_ms", trace.latency_ms, float)
        return attrs

    def _children(self, trace, root, start: int, operation: str) -> None:
        # Spans are recorded in the order they opened, each with the depth it opened at: the
        # parent of a span at depth d is the last one opened at depth d - 1 (the root for 0).
        ids = self.provider.id_generator
        stack = [root]
        for span in trace.spans:
            record = span.to_dict() if self.record_bodies else redact_span(span.to_dict())
            depth = max(0, min(int(span.depth), len(stack) - 1))
            del stack[depth + 1:]
            parent = stack[depth]
            context = SpanContext(root.trace_id, ids.generate_span_id(), False,
                                  root.trace_flags, root.trace_state)
            stack.append(context)
            attrs = _flatten(record.get("attrs") or {})
            kind = SpanKind.INTERNAL
            if span.name == "provider":  # the call upstream: what GenAI backends chart
                kind = SpanKind.CLIENT
                attrs["gen_ai.operation.name"] = operation
                if trace.provider is not None:
                    attrs["gen_ai.provider.name"] = str(trace.provider)
                if trace.upstream_model is not None:
                    attrs["gen_ai.request.model"] = _clip(str(trace.upstream_model), 200)
            begin = start + int((span.start_ms or 0.0) * 1e6)
            self._emit(_clip(str(record.get("name")), 200), context, parent, kind, attrs, begin,
                       begin + int((span.duration_ms or 0.0) * 1e6), _UNSET)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued now (tests, and before a planned stop)."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush what is queued and stop the export thread (blocking: call it off the loop)."""
        if not self._closed:
            self._closed = True
            self.provider.shutdown()


def _error_type(error: dict, status: int) -> str:
    for key in ("code", "type"):
        if isinstance(error.get(key), str) and error[key]:
            return error[key]
    return str(status)


def _number(attrs: dict, name: str, value, kind) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if kind is int and (not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]):
        return
    attrs[name] = kind(value)


def _clip(text: str, limit: int = _MAX_STR) -> str:
    return text if len(text) <= limit else text[:limit]


def _scalar(value):
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, int) and not isinstance(value, bool) and not (
            _INT64[0] <= value <= _INT64[1]):
        return str(value)
    return value


def _flatten(attrs: dict, prefix: str = "keel.") -> dict[str, Any]:
    """A span's attrs as OTel attribute values: nested dicts as dotted keys, lists of one
    scalar type as arrays, anything else (mixed lists, lists of dicts, objects) as JSON text."""
    out: dict[str, Any] = {}
    _flatten_into(out, attrs, prefix, 0)
    return out


def _flatten_into(out: dict, value: dict, prefix: str, depth: int) -> None:
    for key, item in value.items():
        if len(out) >= _MAX_ATTRS:
            return
        name = f"{prefix}{key}"
        if item is None:
            continue
        if isinstance(item, (str, bool, int, float)):
            out[name] = _scalar(item)
        elif isinstance(item, dict) and depth < 3:
            _flatten_into(out, item, name + ".", depth + 1)
        elif isinstance(item, (list, tuple)) and _homogeneous(item):
            out[name] = tuple(_scalar(v) for v in item)  # immutable, as the SDK keeps them
        else:
            out[name] = _clip(json.dumps(item, default=str, ensure_ascii=False))


def _homogeneous(items) -> bool:
    if not items:
        return True
    first = type(items[0])
    if first not in (str, bool, int, float):
        return False
    if first is int:  # an int array may not hold a value OTLP cannot encode
        return all(type(v) is int and _INT64[0] <= v <= _INT64[1] for v in items)
    return all(type(v) is first for v in items)
