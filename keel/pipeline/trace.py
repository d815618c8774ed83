"""The in-memory record of one request, filled in as it flows and persisted by `keel.ops`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any


def new_trace_id() -> str:
    # Time-ordered (ms prefix) so traces list and page in creation order without an extra index.
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


class Span:
    """One timed step of a request; `attrs` carries what the step wants on the record."""

    __slots__ = ("name", "depth", "start_ms", "duration_ms", "attrs", "_t0", "_trace")

    def __init__(self, trace: Trace, name: str, depth: int) -> None:
        self._trace = trace
        self.name = name
        self.depth = depth
        self._t0 = time.perf_counter()
        self.start_ms = (self._t0 - trace.t0) * 1000.0
        self.duration_ms: float | None = None
        self.attrs: dict[str, Any] = {}

    def end(self) -> None:
        if self.duration_ms is None:
            self.duration_ms = (time.perf_counter() - self._t0) * 1000.0
            self._trace._depth -= 1
            # Span -> trace -> spans is a reference cycle: left in place, every trace (with its
            # request and response bodies) waits for the cyclic GC, whose full collections
            # then stall the event loop for tens of ms under load. Refcounting frees it now.
            self._trace = None

    def __enter__(self) -> Span:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "depth": self.depth,
            "start_ms": round(self.start_ms, 3),
            "duration_ms": None if self.duration_ms is None else round(self.duration_ms, 3),
            "attrs": self.attrs,
        }


@dataclass(slots=True)
class Trace:
    id: str = field(default_factory=new_trace_id)
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    endpoint: str = "chat.completions"
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    system_fingerprint: str | None = None
    request: Any = None
    response: Any = None
    error: dict | None = None
    spans: list[Span] = field(default_factory=list)
    # Who asked (keel.api.auth): the key's id and metadata, never its secret.
    key_id: str | None = None
    key_metadata: dict | None = None
    user: str | None = None  # the request's `user` field
    session_id: str | None = None  # x-keel-session-id
    cost_usd: float | None = None  # from the route's pricing, once usage is known
    traceparent: str | None = None  # the caller's W3C trace context, for OpenTelemetry
    admission: Any = None  # keel.ops.limits.Admission: what to settle when the request ends
    _depth: int = 0

    def span(self, name: str) -> Span:
        span = Span(self, name, self._depth)
        self._depth += 1
        self.spans.append(span)
        return span

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.t0) * 1000.0

    def record_usage(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens = usage.get("prompt_tokens")
            self.completion_tokens = usage.get("completion_tokens")
            self.total_tokens = usage.get("total_tokens")

    def finish(self, status: int) -> None:
        self.status = status
        self.latency_ms = (time.perf_counter() - self.t0) * 1000.0
        for span in self.spans:
            if span.duration_ms is None:  # a stream the client abandoned
                span.duration_ms = (time.perf_counter() - span._t0) * 1000.0
                span._trace = None  # the cycle, as in Span.end
