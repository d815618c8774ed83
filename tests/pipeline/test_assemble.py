"""Layers run in the configured order, each as a span, and can change the request or answer."""

from __future__ import annotations

from keel.config import KeelConfig, ModelConfig, ProviderConfig
from keel.gateway import Gateway
from keel.pipeline import Trace
from keel.pipeline.assemble import build_chain


class Tag:
    """A test layer: appends its name to the user message and to the answer."""

    def __init__(self, name):
        self.name = name

    async def __call__(self, ctx, next):
        messages = [dict(m) for m in ctx.body["messages"]]
        messages[-1]["content"] += f" >{self.name}"
        ctx.body = {**ctx.body, "messages": messages}
        result = await next(ctx)
        result["choices"][0]["message"]["content"] += f" <{self.name}"
        return result


def context(tmp_path, body):
    gw = Gateway(KeelConfig(state_dir=tmp_path, providers={"f": ProviderConfig(kind="fake")},
                            models={"m": ModelConfig(provider="f", model="echo")}))
    return gw.context_for(body, Trace())


async def test_layers_run_in_order_and_each_is_a_span(tmp_path):
    ctx = context(tmp_path, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    handler = build_chain([Tag("a"), Tag("b")])
    result = await handler(ctx)
    assert result["choices"][0]["message"]["content"] == "hi >a >b <b <a"
    spans = [(s.name, s.depth) for s in ctx.trace.spans]
    assert spans == [("a", 0), ("b", 1), ("provider", 2)]
    assert all(s.duration_ms is not None for s in ctx.trace.spans)
    assert ctx.trace.spans[0].duration_ms >= ctx.trace.spans[2].duration_ms


async def test_the_provider_span_of_a_stream_lasts_until_the_stream_ends(tmp_path):
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}],
            "stream": True}
    ctx = context(tmp_path, body)
    chunks = await build_chain([])(ctx)
    provider_span = ctx.trace.spans[0]
    assert provider_span.duration_ms is None
    collected = [c async for c in chunks]
    assert len(collected) >= 4 and provider_span.duration_ms is not None
