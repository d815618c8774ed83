"""Building realistic finished traces for the ops tests."""

from __future__ import annotations

from keel.config import TracingConfig
from keel.pipeline.trace import Trace


def make_trace(n: int = 0, *, model: str = "gpt-4o-mini", status: int = 200, **fields) -> Trace:
    trace = Trace(model=model, provider="upstream", upstream_model=f"{model}-2024", **fields)
    trace.request = {"model": model, "messages": [{"role": "user", "content": f"hello {n}"}]}
    with trace.span("json_mode") as outer:
        outer.attrs["mode"] = "text"
        with trace.span("provider") as inner:
            inner.attrs["attempt"] = 1
    trace.response = {"id": f"chatcmpl-{n}", "choices": [{"message": {"content": f"hi {n}"}}]}
    trace.system_fingerprint = "fp_test"
    trace.record_usage({"prompt_tokens": 10 + n, "completion_tokens": 5, "total_tokens": 15 + n})
    if status >= 400:
        trace.error = {"message": "upstream failed", "type": "upstream_error"}
        trace.response = None
    trace.finish(status)
    return trace


def tracing(**overrides) -> TracingConfig:
    return TracingConfig(**{"flush_interval_s": 0.05, **overrides})
