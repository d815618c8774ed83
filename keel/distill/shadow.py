"""The `shadow` layer: a distilled student beside a route, off the response path or as a canary.

    models:
      support-bot:
        provider: openai
        pipeline:
          - json_mode
          - shadow: {student: support-student, mode: shadow, share: 0.1,
                     judge: {kind: fact, model: gpt-4o}, run: <eval run id>}

- `mode: shadow` — for a sampled `share` of requests, once the client has the whole answer
  (a context finalizer, so an answer an outer guard blocked is never compared), the same
  request (the client's own, before layers changed it) goes to the student in a background
  task. The served answer is never delayed or changed: at most `max_pending` shadow calls are
  in flight, more are dropped (counted in `dropped`). The judge — any grader spec, model-graded
  (`fact`, `rubric` ... with `model:`) or deterministic (`fuzzy_match`, `exact`, `similarity`)
  — grades the student's answer against the served one as the ideal, and the cell (variant
  `student`, sample id = the request's trace id) lands in the eval run `run` (created on the
  first sampled request when not given), whose summary is refreshed as cells come, so
  `keel eval show RUN` and the console show the agreement so far.
- `mode: serve` — the canary: a sampled `share` of requests is answered by the student instead
  (its provider and upstream model on the route for that call); `x-keel-model` and
  `x-keel-provider` name the student's deployment and `x-keel-canary` its Keel model.

Sampling is a `random.Random(seed)` per layer, so a given `seed` picks the same requests in
the same order. The student is a Keel model of keel.yaml, called on its provider directly
(without its own layers), as the router calls a deployment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Any, Literal

from pydantic import Field

from keel.errors import ConfigError
from keel.evals.base import Output, Sample
from keel.pipeline import Context, LayerOptions, Next, Result

log = logging.getLogger("keel.distill.shadow")

DROP_KEYS = ("model", "messages", "stream", "stream_options", "n")


class ShadowOptions(LayerOptions):
    student: str = Field(description="the student's Keel model (keel.yaml `models:`)")
    mode: Literal["shadow", "serve"] = Field(
        "shadow", description="shadow: off the response path; serve: a canary share answers")
    share: float = Field(0.1, ge=0, le=1, description="share of requests sampled")
    seed: int | None = Field(None, description="fixes which requests are sampled")
    judge: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "fuzzy_match"},
        description="a grader spec (kind, name, options): the served answer is its ideal")
    run: str | None = Field(None, description="eval run to write to; default: one is created")
    max_pending: int = Field(32, ge=1, description="shadow calls in flight at most")
    timeout_s: float = Field(60.0, gt=0, description="each shadow call and its grading")


class ShadowLayer:
    name = "shadow"
    Options = ShadowOptions

    def __init__(self, options: ShadowOptions, runtime=None) -> None:
        self.options = options
        self.runtime = runtime
        config = getattr(runtime, "config", None)
        model = config.models.get(options.student) if config is not None else None
        if config is not None and model is None:
            known = ", ".join(sorted(config.models)) or "none"
            raise ConfigError(f"shadow.student: no model {options.student!r} in keel.yaml "
                              f"(models: {known})")
        self.student = model
        self._rng = random.Random(options.seed)
        self._tasks: set[asyncio.Task] = set()
        self._run_id = options.run
        self._run_lock = asyncio.Lock()
        self._grader = None
        self.dropped = 0
        self.sampled = 0

    # -- the request path ----------------------------------------------------------------

    async def __call__(self, ctx: Context, next: Next) -> Result:
        if self._rng.random() >= self.options.share:
            return await next(ctx)
        self.sampled += 1
        if self.options.mode == "serve":
            return await self._serve(ctx, next)
        request = _client_request(ctx)
        holder: dict[str, Any] = {}
        result = await next(ctx)
        if ctx.stream:
            result = _tee(result, holder)
        else:
            holder["text"] = _answer_text(result)
        ctx.finalizers.append(lambda: self._launch(ctx, request, holder))
        return result

    async def _serve(self, ctx: Context, next: Next) -> Result:
        provider_name, provider, upstream = self._deployment()
        route = ctx.route
        ctx.route = dataclasses.replace(route, provider_name=provider_name, provider=provider,
                                        upstream_model=upstream, pricing=self.student.pricing)
        try:
            result = await next(ctx)
        finally:
            ctx.route = route
        ctx.response_headers.update({"x-keel-provider": provider_name, "x-keel-model": upstream,
                                     "x-keel-canary": self.options.student})
        ctx.trace.provider, ctx.trace.upstream_model = provider_name, upstream
        return result

    async def _launch(self, ctx: Context, request: dict, holder: dict) -> None:
        """A finalizer: start the shadow call, never wait for it."""
        if len(self._tasks) >= self.options.max_pending:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(ctx.trace.id, ctx.route.name, request, holder.get("text") or ""))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- off the response path -----------------------------------------------------------

    async def _shadow(self, trace_id: str, route: str, request: dict, served: str) -> None:
        try:
            row = await asyncio.wait_for(self._cell(trace_id, request, served),
                                         self.options.timeout_s)
            run_id = await self._ensure_run(route)
            await asyncio.to_thread(_write, self.runtime.store, run_id, row,
                                    self.grader_name)
        except asyncio.CancelledError:
            raise
        except Exception:  # never the served request's problem (logged)
            log.exception("shadow call for trace %s failed", trace_id)

    async def _cell(self, trace_id: str, request: dict, served: str) -> dict:
        _, provider, upstream = self._deployment()
        messages = request.get("messages") or []
        body = {**self.student.defaults.body(),
                **{k: v for k, v in request.items() if k not in DROP_KEYS},
                "messages": messages, "model": upstream}
        started = time.perf_counter()
        error, text, response = None, None, None
        try:
            response = await provider.chat(body, upstream)
            text = _answer_text(response)
        except Exception as exc:  # noqa: BLE001 - a failed student call is its cell's error
            error = {"message": getattr(exc, "message", None) or str(exc),
                     "status": getattr(exc, "status", 500)}
        latency = (time.perf_counter() - started) * 1000.0
        usage = (response or {}).get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        pricing = self.student.pricing
        output = Output(text=text, response=response, error=error, latency_ms=latency,
                        prompt_tokens=prompt, completion_tokens=completion, trace_id=trace_id)
        grades = {}
        if error is None:
            sample = Sample(id=trace_id, input=messages, ideal=served)
            grade = await self.grader().grade(sample, output)
            grades[self.grader_name] = grade.to_dict()
        return {
            "variant": "student", "sample_id": trace_id, "repeat": 0,
            "output": None if error else {"text": text, "response": response, "served": served},
            "error": error, "latency_ms": latency, "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": pricing.cost(prompt, completion) if pricing else 0.0,
            "system_fingerprint": (response or {}).get("system_fingerprint"),
            "trace_id": trace_id, "grades": grades, "created_at": time.time(),
        }

    @property
    def grader_name(self) -> str:
        return self.options.judge.get("name") or "agreement"

    def grader(self):
        if self._grader is None:
            from keel.evals.graders import make_grader

            spec = dict(self.options.judge)
            kind = spec.pop("kind", None)
            spec.pop("name", None)
            if not kind:
                raise ConfigError("shadow.judge: a grader spec needs a `kind`")
            self._grader = make_grader(kind, self.grader_name, spec, ProviderJudge(self.runtime))
        return self._grader

    async def _ensure_run(self, route: str) -> str:
        async with self._run_lock:
            if self._run_id is None:
                self._run_id = await asyncio.to_thread(create_shadow_run, self.runtime.store,
                                                       route, self.options, self.grader_name,
                                                       self.grader())
        return self._run_id

    def _deployment(self) -> tuple[str, Any, str]:
        providers = getattr(self.runtime, "providers", None) or {}
        name = self.student.provider
        if name not in providers:
            raise ConfigError(f"shadow.student: provider {name!r} is not started")
        return name, providers[name], self.student.model or self.options.student

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        return self._run_id

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for the shadow calls in flight (tests, and a clean shutdown)."""
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def aclose(self) -> None:
        await self.drain(5.0)
        for task in list(self._tasks):
            task.cancel()


class ProviderJudge:
    """The judge a model-graded grader calls: a Keel model of keel.yaml, on its provider."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    async def complete(self, body: dict) -> dict:
        name = body.get("model")
        model = self.runtime.config.models.get(name)
        if model is None:
            raise ConfigError(f"shadow.judge: no model {name!r} in keel.yaml")
        upstream = model.model or name
        provider = self.runtime.providers[model.provider]
        return await provider.chat({**model.defaults.body(), **body, "model": upstream},
                                   upstream)

    async def embed(self, texts: list[str], embedder: str = "minilm"):
        return await (await self.runtime.embedder(embedder)).embed(texts)


# -- the eval run ------------------------------------------------------------------------------


def create_shadow_run(store, route: str, options: ShadowOptions, grader_name: str,
                      grader) -> str:
    from keel import __version__
    from keel.evals import runs

    audit = {
        "suite": {"name": f"shadow-{route}", "file": None,
                  "description": f"student {options.student} shadowing route {route}"},
        "dataset": {"name": f"shadow:{route}", "version": "live", "samples": None,
                    "source": "live traffic"},
        "variants": {"student": {"model": options.student, "shadows": route}},
        "graders": {grader_name: _describe(grader)},
        "shadow": options.model_dump(),
    }
    return runs.create_run(store, suite=f"shadow-{route}", dataset_name=f"shadow:{route}",
                           dataset_version="live", config=audit, git_commit=None,
                           keel_version=__version__)


def _describe(grader) -> dict:
    try:
        return grader.describe()
    except Exception as exc:  # noqa: BLE001 - the audit must not stop a promotion
        return {"describe_error": str(exc)}


def _write(store, run_id: str, row: dict, grader: str) -> None:
    """Add the cell, and refresh the run's summary so far (the run stays `running`)."""
    from keel.evals import runs
    from keel.evals.report import summarize
    from keel.store.models import eval_runs

    runs.write_results(store, run_id, [row])
    summary = summarize(runs.results(store, run_id), [grader])
    with store.engine.begin() as conn:
        conn.execute(eval_runs.update().where(eval_runs.c.id == run_id)
                     .values(summary=summary))


# -- helpers -----------------------------------------------------------------------------------


def _client_request(ctx: Context) -> dict:
    """The client's request as it came (the trace keeps it before layers change the body)."""
    request = ctx.trace.request
    if isinstance(request, dict) and request.get("messages"):
        return dict(request)
    return dict(ctx.body)


def _answer_text(response: dict) -> str:
    choices = (response or {}).get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


async def _tee(chunks, holder: dict):
    parts: list[str] = []
    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) == 0:
                    parts.append((choice.get("delta") or {}).get("content") or "")
            yield chunk
    finally:
        holder["text"] = "".join(parts)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()

