"""The `tools` layer: Keel runs the function calling loop with the tools a model is given.

    models:
      assistant:
        provider: openai
        tools: [get_mortgage_rates]          # or {tools: [...], max_rounds: 3, tool_choice: ...}

The loop itself is in `loop.py` (non-streaming) and `stream.py` (streaming); the tools come from
the shared `ToolRegistry`, started when the gateway starts the layer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from keel.errors import ConfigError
from keel.grounding.tools.calls import Toolbox
from keel.grounding.tools.loop import Conversation, run
from keel.grounding.tools.registry import ToolRegistry
from keel.grounding.tools.stream import run_streaming
from keel.pipeline import Context, LayerOptions, Next, Result
from keel.pipeline.layer import refuse_several_choices


class ToolsOptions(LayerOptions):
    tools: list[str] = Field(min_length=1, description="names from the top-level `tools:`")
    max_rounds: int = Field(5, ge=1, le=50, description="rounds of tool calls before answering")
    parallel: bool = Field(True, description="run the calls of one round concurrently")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description='first round only: "auto", "required", "none" or a function name'
    )
    result_max_chars: int = Field(20_000, ge=100, description="longer tool results are cut")


class ToolsLayer:
    name = "tools"
    Options = ToolsOptions

    def __init__(self, options: ToolsOptions, runtime: Any) -> None:
        self.options = options
        self.registry = ToolRegistry.shared(runtime)
        self.registry.check_names(options.tools)
        self._toolbox: Toolbox | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._toolbox is not None:
                return
            tools = await self.registry.acquire(self.options.tools)
            try:
                toolbox = Toolbox(tools)
                self._check_tool_choice(toolbox)
            except ConfigError:
                await self.registry.release(self.options.tools)
                raise
            self._toolbox = toolbox

    async def aclose(self) -> None:
        if self._toolbox is not None:
            self._toolbox = None
            await self.registry.release(self.options.tools)

    def check(self, body: dict) -> None:
        refuse_several_choices(body, self.name, "runs one conversation of tool calls")

    async def __call__(self, ctx: Context, next: Next) -> Result:
        if self._toolbox is None:  # used as a library without the gateway's start()
            await self.start()
        conversation = Conversation(ctx.body, self._toolbox, self.options)
        ctx.state["tool_runs"] = conversation.runs
        if ctx.stream:
            return run_streaming(ctx, next, conversation)
        return await run(ctx, next, conversation)

    def _check_tool_choice(self, toolbox: Toolbox) -> None:
        choice = self.options.tool_choice
        if isinstance(choice, dict):
            choice = (choice.get("function") or {}).get("name")
        elif choice in ("auto", "none", "required"):
            return
        if choice is not None and choice not in toolbox.functions:
            raise ConfigError(
                f"tools.tool_choice: {choice!r} is not one of this model's tools "
                f"({', '.join(sorted(toolbox.functions))})"
            )
