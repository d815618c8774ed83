"""The request path: a `Context` flows down an ordered list of layers to a provider.

A layer is any object with a `name` and `async __call__(ctx, next)`; it may change `ctx.body`,
answer by itself, or wrap what `next(ctx)` returns. The chain for each model is assembled once at
start-up from keel.yaml (`pipeline:` and the model's own `pipeline:`), and every layer call is
recorded as a span on the request's `Trace`. Layers find each other only through this package:
a layer imports `pipeline`, `store`, `embeddings` and `providers`, never another layer.
"""

from keel.pipeline.context import Context, Result, Route
from keel.pipeline.layer import Layer, LayerOptions, Next
from keel.pipeline.trace import Span, Trace

__all__ = ["Context", "Layer", "LayerOptions", "Next", "Result", "Route", "Span", "Trace"]
