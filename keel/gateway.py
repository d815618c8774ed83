"""The composition root: turns a `KeelConfig` into providers, routes and a trace recorder.

Everything the HTTP surface and the CLI need to serve requests hangs off one `Gateway`, so the
stack also works as a library: `async with Gateway(config) as gw: await gw.complete(body)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from keel.config import KeelConfig, LayerSpec
from keel.errors import ClientClosed, InternalError, KeelError, ModelNotFound
from keel.ops.principal import authorize_model
from keel.pipeline import Context, Route, Trace
from keel.pipeline.assemble import build_chain, check_request, make_layer
from keel.pipeline.context import finish
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
        # The router layer calls deployments on other providers than its route's own.
        self.runtime.providers = self.providers
        self.layers: list = []
        self.routes = self._build_routes()
        self.recorder = None
        self.limiter = None  # keel.ops.limits.Limiter, from start()
        self.keys = None  # keel.ops.key_cache.KeyCache when auth is on, from start()
        self.pruner = None  # keel.ops.retention.Pruner when a retention policy is set
        self.otel = None  # keel.ops.otel.OTelExporter when tracing.otlp is set
        # What sees every finished trace besides the store (metrics, OpenTelemetry, the limits'
        # settlement): each is called on the event loop and must neither block nor raise.
        self.sinks: list = []
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
                defaults=spec.defaults.body(),
                handler=build_chain(layers),
                layers=layers,
                created=created,
                owned_by=spec.provider,
                pricing=spec.pricing,
                limits=spec.limits,
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
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            trace.model = model  # so a request refused below is listed by its model
            # The route's defaults go in first, so the one validation below also reads them
            # (a default may itself be an extension, guided_json or json_object + schema).
            for key, value in getattr(self.routes.get(model), "defaults", {}).items():
                body.setdefault(key, value)
        request = validate_chat_request(body)
        route = self.route(request.model)
        trace.provider = route.provider_name
        trace.upstream_model = route.upstream_model
        trace.stream = bool(request.stream)
        route.provider.check(body, route.upstream_model)
        check_request(route.layers, body)
        return Context(body=body, route=route, trace=trace, headers=headers or {})

    async def complete(self, body: dict, *, trace: Trace | None = None,
                       principal=None) -> dict:
        """A non-streaming chat completion through the whole pipeline, traced (library use).
        Pass a `Trace` to learn its id (`trace.id`) and what it recorded. Errors propagate as
        raised; the trace records them as the HTTP path does (`recording`). With a `principal`
        (the console's replay), its model scope, limits and budget apply as on the HTTP path."""
        trace = trace or Trace()
        trace.request = dict(body)
        with self.recording(trace):
            ctx = self.context_for(dict(body, stream=False), trace)
            if principal is not None:
                await self.admit(principal, trace, ctx.route.name, ctx.route.limits)
            result = await ctx.route.handler(ctx)
            await finish(ctx)
            trace.response = result
            trace.record_usage(result.get("usage"))
            trace.system_fingerprint = result.get("system_fingerprint")
            return result

    @contextmanager
    def recording(self, trace: Trace) -> Iterator[None]:
        """Finish and record `trace` when the block ends, whatever the outcome.

        The one place a request's outcome becomes its trace status and error, for the HTTP
        handlers (`keel.api.traced`) and `complete` alike: a `KeelError` is recorded with its
        status and OpenAI error body; a cancelled call (the client left) as 499 `client_closed`;
        anything else as a 500 `InternalError`, logged once with its stack and the trace id.
        The exception itself propagates unchanged. A stream that failed after its headers
        has set `trace.status` already, and that status stands.
        """
        status = 200
        try:
            yield
        except KeelError as exc:
            status = exc.status
            trace.error = exc.to_openai()["error"]
            raise
        except asyncio.CancelledError:
            status = ClientClosed.status
            trace.error = ClientClosed().to_openai()["error"]
            raise
        except Exception:
            log.exception("unexpected error in trace %s", trace.id)
            status = InternalError.status
            trace.error = InternalError.for_trace(trace.id).to_openai()["error"]
            raise
        finally:
            trace.finish(trace.status or status)
            self.record(trace)

    async def admit(self, principal, trace: Trace, model: str, limits=None) -> dict[str, str]:
        """Before a model call: the key may use `model` (else 403), and its limits, the team's
        budget and the model's own limits (`models.X.limits`) admit one more request (else
        429). Returns the `x-ratelimit-*` headers for the response."""
        authorize_model(principal, model)
        trace.key_id = principal.key_id
        if principal.key_id is not None:
            trace.key_metadata = principal.metadata or None
        if self.limiter is None:
            return {}
        return await self.limiter.admit(principal, trace, model, limits)

    def _layer(self, spec: LayerSpec):
        return make_layer(spec.name, spec.typed, self.runtime)

    async def start(self) -> None:
        config = self.config
        if config.tracing.enabled:
            from keel.ops.traces import TraceRecorder

            self.recorder = TraceRecorder(self.runtime.store, config.tracing)
            self.recorder.start()
            if config.tracing.retention_days or config.tracing.max_traces:
                from keel.ops.retention import Pruner

                self.pruner = Pruner(self.runtime.store, config.tracing).start()
        if config.metrics.enabled:
            metrics = self.runtime.metrics
            metrics.watch_recorder(lambda: self.recorder)
            self.sinks.append(metrics.observe)
        if config.tracing.otlp is not None:
            from keel.ops.otel import OTelExporter

            self.otel = OTelExporter(
                config.tracing.otlp, record_bodies=config.tracing.record_bodies)
            self.sinks.append(self.otel.export)
        from keel.ops.limits import Limiter

        self.limiter = Limiter(config, self.runtime)
        await self.limiter.start()
        self.sinks.append(self.limiter.settle)
        if config.auth_settings() is not None:
            from keel.ops.key_cache import KeyCache

            self.keys = KeyCache(self.runtime.store, config.auth_settings())
            await self.keys.start()
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
        for part in (self.keys, self.limiter):
            if part is not None:
                try:
                    await part.aclose()
                except Exception:
                    log.exception("closing %s failed", type(part).__name__)
        if self.pruner is not None:
            await asyncio.to_thread(self.pruner.close)
        if self.recorder is not None:
            # Flushing waits on the database: keep the event loop free meanwhile.
            await asyncio.to_thread(self.recorder.close)
        if self.otel is not None:
            await asyncio.to_thread(self.otel.shutdown)
        await self.runtime.aclose()

    def record(self, trace) -> None:
        if trace.cost_usd is None and trace.prompt_tokens is not None:
            route = self.routes.get(trace.model) if trace.provider is not None else None
            if route is not None and route.pricing is not None:
                trace.cost_usd = route.pricing.cost(trace.prompt_tokens, trace.completion_tokens)
        for sink in self.sinks:
            try:
                sink(trace)
            except Exception:  # one broken sink must not lose the trace or fail the request
                log.exception("trace sink %r failed on trace %s", sink, trace.id)
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
