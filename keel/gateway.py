"""The composition root: turns a `KeelConfig` into providers, routes and a trace recorder.

Everything the HTTP surface and the CLI need to serve requests hangs off one `Gateway`, so the
stack also works as a library: `async with Gateway(config) as gw: await gw.complete(body)`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from keel.config import KeelConfig, LayerSpec
from keel.errors import ModelNotFound
from keel.pipeline import Context, Route, Trace
from keel.pipeline.assemble import build_chain, make_layer
from keel.pipeline.request import validate_chat_request
from keel.pipeline.runtime import Runtime
from keel.providers.registry import provider_class

log = logging.getLogger("keel")


class Gateway:
    def __init__(self, config: KeelConfig) -> None:
        self.config = config
        self.providers = {
            name: _make_provider(name, spec.kind, spec.model_extra or {})
            for name, spec in config.providers.items()
        }
        self.runtime = Runtime(config)
        self.layers: list = []
        self.routes = self._build_routes()
        self.recorder = None
        self.ready = False

    def _build_routes(self) -> dict[str, Route]:
        created = int(time.time())
        routes = {}
        for name, spec in self.config.models.items():
            layers = [self._layer(s) for s in spec.layer_specs(self.config.pipeline)]
            self.layers.extend(layers)
            routes[name] = Route(
                name=name,
                provider_name=spec.provider,
                provider=self.providers[spec.provider],
                upstream_model=spec.model or name,
                defaults=dict(spec.defaults),
                handler=build_chain(layers),
                created=created,
                owned_by=spec.provider,
                pricing=spec.pricing,
            )
        return routes

    def route(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
            )
        return route

    def context_for(self, body: dict, trace: Trace, headers=None) -> Context:
        """Validate a Chat Completions body and place it on its route, ready to run."""
        request = validate_chat_request(body)
        trace.model = request.model
        route = self.route(request.model)
        trace.provider = route.provider_name
        trace.upstream_model = route.upstream_model
        trace.stream = bool(request.stream)
        for key, value in route.defaults.items():
            body.setdefault(key, value)
        route.provider.check(body, route.upstream_model)
        return Context(body=body, route=route, trace=trace, headers=headers or {})

    async def complete(self, body: dict, *, trace: Trace | None = None) -> dict:
        """A non-streaming chat completion through the whole pipeline, traced (library use).
        Pass a `Trace` to learn its id (`trace.id`) and what it recorded."""
        trace = trace or Trace()
        trace.request = dict(body)
        status = 200
        try:
            ctx = self.context_for(dict(body, stream=False), trace)
            result = await ctx.route.handler(ctx)
            trace.response = result
            trace.record_usage(result.get("usage"))
            trace.system_fingerprint = result.get("system_fingerprint")
            return result
        except Exception as exc:
            status = getattr(exc, "status", 500)
            trace.error = {"message": str(exc), "status": status}
            raise
        finally:
            trace.finish(status)
            self.record(trace)

    def _layer(self, spec: LayerSpec):
        return make_layer(spec.name, spec.options, self.runtime)

    async def start(self) -> None:
        if self.config.tracing.enabled:
            from keel.ops.traces import TraceRecorder

            self.recorder = TraceRecorder(self.runtime.store, self.config.tracing)
            self.recorder.start()
        for provider in self.providers.values():
            await provider.start()
        for layer in self.layers:
            start = getattr(layer, "start", None)
            if start is not None:
                await start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        for layer in self.layers:
            aclose = getattr(layer, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing layer %s failed", layer.name)
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:  # closing one must not stop the others, nor the trace flush
                log.exception("closing a provider failed")
        if self.recorder is not None:
            # Flushing waits on the database: keep the event loop free meanwhile.
            await asyncio.to_thread(self.recorder.close)
        await self.runtime.aclose()

    def record(self, trace) -> None:
        if self.recorder is not None:
            self.recorder.submit(trace)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _make_provider(name: str, kind: str, options: dict):
    cls = provider_class(kind)
    return cls(name, cls.Options.model_validate(options))
