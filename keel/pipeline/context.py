"""What a layer sees: the request, the route it is on, and its trace."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from keel.pipeline.trace import Trace

# A non-streaming call returns a `chat.completion` dict; a streaming one an iterator of chunks.
Result = dict | AsyncIterator[dict]


@dataclass(slots=True)
class Route:
    """A public model name and everything needed to serve it."""

    name: str
    provider_name: str
    provider: Any  # keel.providers.Provider
    upstream_model: str
    defaults: dict[str, Any] = field(default_factory=dict)
    handler: Callable[[Context], Awaitable[Result]] | None = None
    created: int = 0
    owned_by: str = "keel"
    pricing: Any = None  # keel.config.PricingConfig, when the model's price is configured
    layers: list = field(default_factory=list)  # the layers of `handler`, first first
    limits: Any = None  # keel.config.RateLimitConfig: this model's rpm/tpm on this deployment


@dataclass(slots=True)
class Context:
    body: dict
    route: Route
    trace: Trace
    headers: Mapping[str, str] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    # Run once the client has the whole answer and every layer passed it (the cache stores an
    # entry only then: never an answer an output guard blocked). `finish(ctx)` runs them.
    finalizers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


async def finish(ctx: Context) -> None:
    """Run the context's finalizers; one that fails is logged, never the request's failure."""
    for finalizer in ctx.finalizers:
        try:
            await finalizer()
        except Exception:
            logging.getLogger("keel.pipeline").exception(
                "a finalizer failed on trace %s", ctx.trace.id)
