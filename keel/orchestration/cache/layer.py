"""STUB (issue 10, a helper replaces this): the cache layer."""

from __future__ import annotations

from keel.pipeline import Context, LayerOptions, Next, Result


class CacheLayerOptions(LayerOptions):
    model_config = {"extra": "allow"}


class CacheLayer:
    name = "cache"
    Options = CacheLayerOptions

    def __init__(self, options, runtime=None) -> None:
        self.options = options

    async def __call__(self, ctx: Context, next: Next) -> Result:
        return await next(ctx)
