"""The `router` layer: one public model served by several deployments, surviving their outages.

It runs last before the provider call (`models.X.router:` in keel.yaml, docs/router.md). For
each request it orders the deployments (weighted or least-busy, `deployments.py`; with
`learned:`, the group the learned router picks first), then the fallback models' deployments,
and tries them in turn:

- an attempt points `ctx.route` at the deployment (a shallow copy of the route with its
  provider and upstream model) and calls the provider; the route is restored afterwards;
- an error the upstream is to blame for (`KeelError.retryable`: 429, 5xx, timeouts, refused or
  broken connections) is retried on the same deployment with exponential backoff and jitter
  (tenacity), waiting what `Retry-After` says when the upstream says it, then the next
  deployment is tried; the client's own errors (400, 404 ...) are raised at once;
- a stream counts as answered once its first chunk arrived (it is pulled inside the attempt);
  an error after that reaches the client as an SSE error event (keel/api/sse.py);
- a circuit breaker per deployment (`breaker.py`) skips a deployment that keeps failing and
  lets one probe through after its cooldown.

Every attempt is a `router.attempt` span; the response says which deployment answered
(`x-keel-provider`, `x-keel-model`) and how many attempts it took (`x-keel-attempts`). When every
deployment failed, the last upstream error is raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)

from keel.errors import ConfigError, KeelError, UpstreamError, UpstreamTimeout
from keel.orchestration.router import deployments as deps
from keel.orchestration.router.breaker import CLOSED, Breaker
from keel.orchestration.router.deployments import Deployment
from keel.pipeline import Context, LayerOptions, Next, Result

log = logging.getLogger("keel.router")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentOptions(_Strict):
    provider: str = Field(description="a provider of keel.yaml's `providers:`")
    model: str = Field(description="the provider's name for the model")
    weight: float = Field(1.0, gt=0, description="share of first tries (weighted)")
    rpm: int | None = Field(None, gt=0, description="this deployment's requests per minute")
    tpm: int | None = Field(None, gt=0, description="this deployment's tokens per minute")
    group: str | None = Field(None, description="learned routing: strong or cheap")


class BackoffOptions(_Strict):
    initial_s: float = Field(0.2, ge=0, description="the first retry's wait")
    max_s: float = Field(5.0, ge=0, description="the longest wait, Retry-After included")
    jitter: bool = Field(True, description="wait a random time up to the exponential one")


class BreakerOptions(_Strict):
    failures: int = Field(5, ge=1, description="failures within window_s that open it")
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(30.0, gt=0, description="open this long, then one probe")


class RouterLayerOptions(LayerOptions):
    deployments: list[DeploymentOptions] = Field(min_length=1)
    strategy: Literal["weighted", "least_busy"] = "weighted"
    retries: int = Field(2, ge=0, description="retries per deployment after its first try")
    backoff: BackoffOptions = Field(default_factory=BackoffOptions)
    fallbacks: list[str] = Field(default_factory=list, description="other public models")
    breaker: BreakerOptions | None = Field(default_factory=BreakerOptions,
                                           description="null: no circuit breaker")
    timeout_s: float | None = Field(60.0, gt=0, description="each attempt, to its first chunk")
    learned: dict[str, Any] | None = Field(None, description="learned cost-aware routing")


class NoDeploymentAvailable(UpstreamError):
    """Every deployment was skipped (circuit open, its own rpm/tpm spent) before any attempt."""

    status = 503
    code = "no_deployment_available"


class _Skip(Exception):
    """The deployment is not tried now (circuit open, its rate limit spent)."""


_END = object()


class RouterLayer:
    name = "router"
    Options = RouterLayerOptions

    def __init__(self, options: RouterLayerOptions, runtime=None) -> None:
        self.options = options
        self.runtime = runtime
        providers = getattr(runtime, "providers", None) or {}
        self.deployments = [_deployment(d, providers) for d in options.deployments]
        self.fallbacks = [(name, [_deployment(d, providers) for d in _fallback_options(
            name, runtime)]) for name in options.fallbacks]
        shared = getattr(runtime, "shared", None)
        shared = shared if shared is not None else {}
        # Shared by every router layer of the process: a deployment that is also another
        # model's fallback has one breaker and one in-flight count.
        self._breakers: dict[str, Breaker] = shared.setdefault("router.breakers", {})
        self._in_flight: Counter[str] = shared.setdefault("router.in_flight", Counter())
        self._rng = random.Random()
        if options.backoff.jitter:
            self._backoff = wait_random_exponential(
                multiplier=options.backoff.initial_s, max=options.backoff.max_s)
        else:
            self._backoff = wait_exponential(
                multiplier=options.backoff.initial_s, max=options.backoff.max_s)
        self._learned = None
        self._learned_cls = None
        if options.learned is not None:
            # learned.strong / learned.cheap name two deployment groups (`group:`).
            groups = {d.group for d in self.deployments}
            for role in ("strong", "cheap"):
                group = options.learned.get(role, role)
                if group not in groups:
                    raise ConfigError(
                        f"router.learned.{role}: no deployment has `group: {group}` (the learned "
                        "router chooses between a strong and a cheap group of deployments)")
            try:
                from keel.orchestration.router.learned import LearnedRouter
            except ImportError as exc:
                raise ConfigError(f"router.learned: learned routing is not available ({exc})") \
                    from None
            self._learned_cls = LearnedRouter
        self._counters: dict[str, Any] | None = None

    async def start(self) -> None:
        if self._learned_cls is not None:
            learned = self._learned_cls.from_options(self.options.learned, self.runtime)
            start = getattr(learned, "start", None)
            if start is not None:
                await start()
            self._learned = learned

    # -- the request -----------------------------------------------------------------------

    async def __call__(self, ctx: Context, next: Next) -> Result:
        route = ctx.route
        plan = await self._plan(ctx)
        last_error: KeelError | None = None
        count = [0]  # attempts made by this call
        try:
            for index, (deployment, fallback) in enumerate(plan):
                breaker = self._breaker(deployment)
                if breaker is not None and not breaker.available():
                    continue
                if index and (last_error is not None or fallback is not None):
                    self._count("fallbacks", model=route.name, to=deployment.name)
                try:
                    return await self._deployment_call(ctx, next, deployment, count)
                except _Skip:
                    continue
                except KeelError as exc:
                    if not exc.retryable:  # the client's mistake: the same everywhere
                        total = ctx.state.get("router.attempts", 0) + count[0]
                        exc.headers = {**exc.headers, "x-keel-attempts": str(total)}
                        raise
                    last_error = exc
        finally:
            ctx.route = route
            total = ctx.state.get("router.attempts", 0) + count[0]
            ctx.state["router.attempts"] = total
            ctx.response_headers["x-keel-attempts"] = str(total)
        if last_error is None:
            last_error = NoDeploymentAvailable(
                f"No deployment of model '{route.name}' is available now (every circuit open "
                "or every deployment's rate limit spent); retry shortly.",
                headers={"Retry-After": "1"})
        last_error.headers = {**last_error.headers,
                              "x-keel-attempts": ctx.response_headers["x-keel-attempts"]}
        raise last_error

    async def _plan(self, ctx: Context) -> list[tuple[Deployment, str | None]]:
        def busy(d: Deployment) -> int:
            return self._in_flight[d.name]

        strategy = self.options.strategy
        own = self.deployments
        if self._learned is not None:
            choice = None
            try:
                choice = await self._learned.choose(ctx)
            except Exception:  # the learned router is an optimisation: never the failure
                log.exception("router: the learned router failed; default order used")
            if choice is not None:
                # "strong" or "cheap": a role, which learned.strong / learned.cheap map to a group
                group = getattr(self._learned, str(choice), choice)
                ctx.state["router.choice"] = choice
                ctx.response_headers["x-keel-router-choice"] = str(choice)
                first = [d for d in own if d.group == group]
                rest = [d for d in own if d.group != group]
                own = (deps.order(first, strategy, self._rng, busy)
                       + deps.order(rest, strategy, self._rng, busy))
            else:
                own = deps.order(own, strategy, self._rng, busy)
        else:
            own = deps.order(own, strategy, self._rng, busy)
        plan: list[tuple[Deployment, str | None]] = [(d, None) for d in own]
        seen = {d.name for d in own}
        for name, fallback in self.fallbacks:
            for d in deps.order(fallback, strategy, self._rng, busy):
                if d.name not in seen:
                    seen.add(d.name)
                    plan.append((d, name))
        return plan

    async def _deployment_call(self, ctx: Context, next: Next, deployment: Deployment,
                               count: list[int]) -> Result:
        """Up to 1 + `retries` attempts on one deployment."""
        breaker = self._breaker(deployment)
        waits: list[float] = []

        def retry_same(exc: BaseException) -> bool:
            if not isinstance(exc, KeelError) or not exc.retryable:
                return False
            if breaker is not None and breaker.state != CLOSED:
                return False  # it just opened (or its probe failed): move on
            after = _retry_after(exc)
            return after is None or after <= self.options.backoff.max_s

        def wait(state) -> float:
            after = _retry_after(state.outcome.exception())
            seconds = after if after is not None else self._backoff(state)
            waits.append(seconds)
            return seconds

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.options.retries + 1),
            wait=wait,
            retry=retry_if_exception(retry_same),
            reraise=True,
        )
        return await retrying(self._attempt, ctx, next, deployment, count, waits)

    async def _attempt(self, ctx: Context, next: Next, deployment: Deployment,
                       count: list[int], waits: list[float]) -> Result:
        breaker = self._breaker(deployment)
        if breaker is not None and not breaker.available():
            raise _Skip
        if not await deps.admit(self.runtime.state, deployment):
            self._count("attempts", deployment=deployment.name, outcome="rate_limited")
            raise _Skip
        if breaker is not None and not breaker.allow():
            raise _Skip
        count[0] += 1
        number = ctx.state.get("router.attempts", 0) + count[0]
        if waits:
            self._count("retries", deployment=deployment.name)
        span = ctx.trace.span("router.attempt")
        span.attrs.update(deployment=deployment.name, attempt=number,
                          wait_s=round(waits[-1], 3) if waits else 0.0)
        route = ctx.route
        ctx.route = dataclasses.replace(route, provider_name=deployment.provider_name,
                                        provider=deployment.provider,
                                        upstream_model=deployment.model)
        self._in_flight[deployment.name] += 1
        streaming = False
        chunks = None
        try:
            try:
                async with asyncio.timeout(self.options.timeout_s):
                    result = await next(ctx)
                    if ctx.stream:
                        chunks = result
                        first = await anext(chunks, _END)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"deployment {deployment.name} gave no answer within the router's "
                    f"timeout_s of {self.options.timeout_s:g} s") from None
        except BaseException as exc:
            if chunks is not None:
                await _aclose(chunks)
            self._attempt_failed(deployment, breaker, span, exc)
            raise
        else:
            self._attempt_ok(ctx, deployment, breaker, span)
            if ctx.stream:
                streaming = True
                return self._relay(first, chunks, deployment, breaker)
            await deps.settle(self.runtime.state, deployment, result.get("usage"))
            return result
        finally:
            ctx.route = route
            span.end()
            if not streaming:
                self._in_flight[deployment.name] -= 1

    async def _relay(self, first, chunks: AsyncIterator[dict], deployment: Deployment,
                     breaker: Breaker | None) -> AsyncIterator[dict]:
        """The stream after its first chunk: errors now reach the client (an SSE error event)."""
        usage = None
        try:
            if first is _END:
                return
            yield first
            async for chunk in chunks:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                yield chunk
        except KeelError as exc:
            if exc.retryable and breaker is not None:
                breaker.failure()
            self._count("attempts", deployment=deployment.name, outcome="stream_error")
            raise
        finally:
            self._in_flight[deployment.name] -= 1
            await _aclose(chunks)
            await deps.settle(self.runtime.state, deployment, usage)

    def _attempt_ok(self, ctx: Context, deployment: Deployment, breaker, span) -> None:
        if breaker is not None:
            breaker.success()
        span.attrs.update(outcome="ok", status=200)
        self._count("attempts", deployment=deployment.name, outcome="ok")
        ctx.response_headers["x-keel-provider"] = deployment.provider_name
        ctx.response_headers["x-keel-model"] = deployment.model
        ctx.trace.provider = deployment.provider_name
        ctx.trace.upstream_model = deployment.model

    def _attempt_failed(self, deployment: Deployment, breaker, span, exc: BaseException) -> None:
        if isinstance(exc, KeelError):
            outcome = "error" if exc.retryable else "client_error"
            span.attrs.update(outcome=outcome, status=exc.status, error=exc.code)
            if breaker is not None:
                breaker.failure() if exc.retryable else breaker.release()
            self._count("attempts", deployment=deployment.name, outcome=outcome)
            if exc.retryable:
                log.info("router: deployment %s failed (%s %s): %s", deployment.name,
                         exc.status, exc.code, exc.message)
        else:  # cancelled (the client left) or a bug: says nothing about the deployment
            span.attrs.update(outcome="cancelled" if isinstance(exc, asyncio.CancelledError)
                              else "internal_error")
            if breaker is not None:
                breaker.release()

    # -- breakers and metrics --------------------------------------------------------------

    def _breaker(self, deployment: Deployment) -> Breaker | None:
        options = self.options.breaker
        if options is None:
            return None
        breaker = self._breakers.get(deployment.name)
        if breaker is None:
            breaker = self._breakers[deployment.name] = Breaker(
                deployment.name, options.failures, options.window_s, options.cooldown_s,
                on_change=self._breaker_moved)
        return breaker

    def _breaker_moved(self, deployment: str, to: str) -> None:
        self._count("breaker", deployment=deployment, to=to)

    def _count(self, which: str, **labels: str) -> None:
        counters = self._metrics()
        if counters is None:
            return
        try:
            counters[which].labels(**labels).inc()
        except Exception:  # metrics must never fail a request
            log.debug("counting a router %s failed", which, exc_info=True)

    def _metrics(self) -> dict[str, Any] | None:
        if self._counters is None:
            metrics = getattr(self.runtime, "metrics", None)
            if metrics is None or not hasattr(metrics, "counter"):
                return None
            try:
                self._counters = {
                    "attempts": metrics.counter(
                        "keel_router_attempts_total",
                        "Router attempts by deployment and outcome (ok, error, client_error, "
                        "rate_limited, stream_error)", ["deployment", "outcome"]),
                    "retries": metrics.counter(
                        "keel_router_retries_total",
                        "Router retries on the same deployment", ["deployment"]),
                    "fallbacks": metrics.counter(
                        "keel_router_fallbacks_total",
                        "Requests the router passed on to another deployment or model",
                        ["model", "to"]),
                    "breaker": metrics.counter(
                        "keel_router_breaker_transitions_total",
                        "Circuit breaker state changes by deployment and new state",
                        ["deployment", "to"]),
                }
            except Exception:
                log.exception("registering the router's metrics failed")
                self._counters = {}
        return self._counters or None


def _deployment(options: DeploymentOptions, providers: dict) -> Deployment:
    provider = providers.get(options.provider)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none defined"
        raise ConfigError(f"router.deployments: unknown provider {options.provider!r} "
                          f"(providers: {known})")
    return Deployment(
        name=f"{options.provider}/{options.model}", provider_name=options.provider,
        provider=provider, model=options.model, weight=options.weight, rpm=options.rpm,
        tpm=options.tpm, group=options.group)


def _fallback_options(name: str, runtime) -> list[DeploymentOptions]:
    """A fallback model's deployments: its own router's, or its provider and model."""
    models = getattr(getattr(runtime, "config", None), "models", None) or {}
    spec = models.get(name)
    if spec is None:
        known = ", ".join(sorted(models)) or "none defined"
        raise ConfigError(f"router.fallbacks: unknown model {name!r} (models: {known})")
    if spec.router is not None:
        return RouterLayerOptions.model_validate(spec.router).deployments
    return [DeploymentOptions(provider=spec.provider, model=spec.model or name)]


def _retry_after(exc: BaseException | None) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not worth parsing for a wait this short
        return None


async def _aclose(chunks) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a failed stream raised", exc_info=True)

