"""Run the model's tool calls: parse the arguments, find the function, call it, time it.

Whatever goes wrong — arguments that are not JSON, a function that does not exist, invalid
arguments, a timeout, an exception in the tool — becomes the call's result, `{"error": ...}`,
for the model to read; the request itself goes on. Each call is a `tool:<name>` span.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

import orjson

from keel.errors import ConfigError
from keel.grounding.tools.base import Tool, ToolError
from keel.pipeline import Trace

log = logging.getLogger("keel.tools")
_SPAN_ARGUMENTS_CHARS = 2000


@dataclass(slots=True)
class ToolRun:
    call_id: str
    name: str
    arguments: str
    ok: bool
    content: str
    duration_ms: float
    error: str | None = None

    def record(self) -> dict:
        """What the response's `tool_runs` and the trace keep of it."""
        out = {"name": self.name, "arguments": self.arguments, "ok": self.ok,
               "duration_ms": round(self.duration_ms, 3)}
        if self.error is not None:
            out["error"] = self.error
        return out


class Toolbox:
    """The functions one `tools` layer offers, by the name the model calls them."""

    def __init__(self, tools: list[Tool]) -> None:
        self.functions: dict[str, Tool] = {}
        self.definitions: list[dict] = []
        for tool in tools:
            for definition in tool.definitions():
                name = definition["function"]["name"]
                if name in self.functions:
                    raise ConfigError(
                        f"tools: two tools offer a function named {name!r} "
                        f"({self.functions[name].name} and {tool.name})"
                    )
                self.functions[name] = tool
                self.definitions.append(definition)

    async def run(self, call: dict, trace: Trace, max_chars: int) -> ToolRun:
        function = call.get("function") or {}
        name = function.get("name") or ""
        raw = function.get("arguments") or "{}"
        error = None
        with trace.span(f"tool:{name}") as span:
            t0 = time.perf_counter()
            try:
                content = await self._call(name, raw)
            except ToolError as exc:
                error = str(exc)
            except Exception as exc:  # a bug in the tool must not fail the request
                # The stack and the type, not the message: it may quote the arguments, and
                # logs must hold what `record_bodies: false` promises. The trace has it.
                log.error("tool %s failed with %s (trace %s):\n%s", name, type(exc).__name__,
                          trace.id, "".join(traceback.format_tb(exc.__traceback__)))
                error = f"the tool failed: {type(exc).__name__}: {exc}"
            duration_ms = (time.perf_counter() - t0) * 1000.0
            if error is not None:
                content = orjson.dumps({"error": error}).decode()
            span.attrs.update(
                arguments=raw[:_SPAN_ARGUMENTS_CHARS], ok=error is None, error=error,
                duration_ms=round(duration_ms, 3),
            )
        return ToolRun(call.get("id") or "", name, raw, error is None,
                       truncate(content, max_chars), duration_ms, error)

    async def _call(self, name: str, raw: str) -> str:
        tool = self.functions.get(name)
        if tool is None:
            known = ", ".join(sorted(self.functions))
            raise ToolError(f"there is no tool named {name!r}; the tools are: {known}")
        try:
            arguments = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ToolError(f"the arguments are not valid JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise ToolError("the arguments must be a JSON object")
        return await tool.call(name, arguments)


def truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[truncated: {len(text) - max_chars} more characters]"
