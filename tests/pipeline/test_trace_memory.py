"""A finished trace is freed by reference counting, not left for the cyclic garbage collector.

Every request makes a trace; when each one was a reference cycle (span -> trace -> spans), traces
and the bodies they hold piled up for the collector, whose full collections then stalled the
event loop for tens of milliseconds under load (docs/benchmarks.md, "The tail").
"""

from __future__ import annotations

import gc

from keel.pipeline import Trace


def _garbage_left_by(make) -> int:
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            make()
        return gc.collect()
    finally:
        gc.enable()


def _finished_trace(end_spans: bool) -> None:
    trace = Trace()
    trace.request = {"messages": [{"role": "user", "content": "hello"}]}
    outer = trace.span("layer")
    inner = trace.span("provider.chat")
    inner.attrs["model"] = "echo"
    if end_spans:
        inner.end()
        outer.end()
    trace.response = {"choices": [{"message": {"content": "hi"}}]}
    trace.finish(200)  # spans a client left unfinished are closed here


def test_a_finished_trace_is_no_reference_cycle():
    assert _garbage_left_by(lambda: _finished_trace(end_spans=True)) == 0


def test_a_trace_with_spans_left_open_is_no_reference_cycle_once_finished():
    assert _garbage_left_by(lambda: _finished_trace(end_spans=False)) == 0


def test_span_depths_still_nest():
    trace = Trace()
    with trace.span("a") as a:
        with trace.span("b") as b:
            pass
        with trace.span("c") as c:
            pass
    assert (a.depth, b.depth, c.depth) == (0, 1, 1)
