"""Build each route's chain of layers once, at start-up, ending in the provider call."""

from __future__ import annotations

from typing import Any, AsyncIterator

from keel.pipeline.context import Context, Result
from keel.pipeline.layer import Layer, LayerOptions, Next, layer_class
from keel.pipeline.trace import Span


def make_layer(name: str, options: dict | LayerOptions, runtime: Any = None) -> Layer:
    """The layer `name`, given its options: already typed (a `LayerSpec.typed`, validated when
    keel.yaml was loaded) or as a dict, validated here."""
    cls = layer_class(name)
    if not isinstance(options, cls.Options):
        options = cls.Options.model_validate(options)
    return cls(options, runtime)


def check_request(layers: list[Layer], body: dict) -> None:
    """Let each layer refuse, at the request edge, a request it cannot honour (`Layer.check`)."""
    for layer in layers:
        check = getattr(layer, "check", None)
        if check is not None:
            check(body)


def build_chain(layers: list[Layer]) -> Next:
    """`layers[0]` runs first; each call is a span named after its layer."""
    handler: Next = call_provider
    for layer in reversed(layers):
        handler = _traced(layer, handler)
    return handler


def _traced(layer: Layer, next: Next) -> Next:
    name = layer.name

    async def call(ctx: Context) -> Result:
        with ctx.trace.span(name):
            return await layer(ctx, next)

    return call


async def call_provider(ctx: Context) -> Result:
    route = ctx.route
    span = ctx.trace.span("provider")
    span.attrs["provider"] = route.provider_name
    span.attrs["model"] = route.upstream_model
    if ctx.stream:
        # The span stays open until the stream ends, so it measures the whole generation.
        return _spanned(route.provider.stream(ctx.body, route.upstream_model), span)
    try:
        return await route.provider.chat(ctx.body, route.upstream_model)
    finally:
        span.end()


async def _spanned(chunks: AsyncIterator[dict], span: Span) -> AsyncIterator[dict]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        span.end()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
