"""A scripted provider for the tools loop, and a harness that runs the `tools` layer with it.

`ScriptedProvider(step, step, ...)`: each model call takes the next step, a function of the
request body that returns an answer built with `calls(...)` or `text(...)`; the bodies it was
sent are kept in `.bodies`. Streams are cut like real ones: a role chunk, word deltas or a tool
call's arguments in two fragments, a finish chunk, a usage chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from keel.config import KeelConfig, ToolConfig
from keel.grounding.tools.layer import ToolsLayer
from keel.pipeline import Context, Route, Trace
from keel.pipeline.assemble import build_chain
from keel.pipeline.runtime import Runtime
from keel.providers import shapes
from keel.providers.base import ProviderOptions

Step = Callable[[dict], dict]


def calls(*specs: tuple[str, dict], content: str | None = None) -> dict:
    """An answer calling (name, arguments) for each spec."""
    tool_calls = [
        shapes.tool_call(f"call_{i}", name, orjson.dumps(args).decode())
        for i, (name, args) in enumerate(specs)
    ]
    return {"content": content, "tool_calls": tool_calls}


def text(content: str) -> dict:
    return {"content": content, "tool_calls": None}


def tool_results(body: dict) -> list[str]:
    """The contents of the `tool` messages the model was sent."""
    return [m["content"] for m in body["messages"] if m.get("role") == "tool"]


class ScriptedProvider:
    kind = "scripted"
    Options = ProviderOptions

    def __init__(self, *steps: Step | dict) -> None:
        self.steps = list(steps)
        self.bodies: list[dict] = []

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def check(self, body: dict, model: str) -> None: ...

    def _next(self, body: dict) -> dict:
        self.bodies.append(body)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(body) if callable(step) else step

    async def chat(self, body: dict, model: str) -> dict:
        answer = self._next(body)
        finish = "tool_calls" if answer["tool_calls"] else "stop"
        return shapes.completion(model, answer["content"], tool_calls=answer["tool_calls"],
                                 finish_reason=finish, usage=shapes.usage(10, 5))

    async def stream(self, body: dict, model: str):
        answer = self._next(body)
        cid = shapes.new_id()

        def chunk(delta, finish=None):
            return shapes.chunk(cid, 1, model, delta, finish_reason=finish)

        yield chunk({"role": "assistant", "content": ""})
        for word in (answer["content"] or "").split(" "):
            if word:
                yield chunk({"content": word + " "})
        for i, call in enumerate(answer["tool_calls"] or ()):
            args = call["function"]["arguments"]
            half = len(args) // 2
            yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"],
                                                      "arguments": args[:half]}}]})
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]})
        yield chunk({}, "tool_calls" if answer["tool_calls"] else "stop")
        yield shapes.usage_chunk(cid, 1, model, shapes.usage(10, 5))


class Harness:
    """A `tools` layer over a scripted provider, as the gateway would build it."""

    def __init__(self, tmp_path, registry: dict[str, dict], **layer_options) -> None:
        config = KeelConfig(state_dir=tmp_path,
                            tools={name: ToolConfig(**spec) for name, spec in registry.items()})
        self.runtime = Runtime(config)
        options = {"tools": list(registry), **layer_options}
        self.layer = ToolsLayer(ToolsLayer.Options.model_validate(options), self.runtime)
        self.chain = build_chain([self.layer])

    async def __aenter__(self) -> Harness:
        await self.layer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.layer.aclose()

    async def ask(self, provider: ScriptedProvider, question: str = "q", **body):
        """(result, trace): a completion dict, or the list of chunks when streaming."""
        route = Route(name="m", provider_name="scripted", provider=provider, upstream_model="m")
        request = {"model": "m", "messages": [{"role": "user", "content": question}], **body}
        ctx = Context(body=request, route=route, trace=Trace())
        result = await self.chain(ctx)
        if body.get("stream"):
            result = [chunk async for chunk in result]
        return result, ctx.trace
