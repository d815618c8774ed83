"""The tools of keel.yaml (`tools:`), built on first use and started once for every model.

One registry lives in `runtime.shared`, so two models offering the same MCP server share one
server process. Each `tools` layer acquires the entries it names when the gateway starts it and
releases them when it closes; an entry is closed when no layer uses it any more. Entries no
model names are never started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from keel.errors import ConfigError
from keel.grounding.tools.base import Tool
from keel.plugins import load

SHARED_KEY = "keel.grounding.tools"


class ToolRegistry:
    def __init__(self, configs: Mapping[str, Any]) -> None:
        self.configs = dict(configs)  # name -> keel.config.ToolConfig
        self._tools: dict[str, Tool] = {}
        self._users: dict[str, int] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def shared(cls, runtime: Any) -> ToolRegistry:
        """The registry of `runtime.config.tools`, one per runtime."""
        registry = runtime.shared.get(SHARED_KEY)
        if registry is None:
            registry = runtime.shared[SHARED_KEY] = cls(runtime.config.tools)
        return registry

    def check_names(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.configs]
        if unknown:
            known = ", ".join(sorted(self.configs)) or "none defined"
            raise ConfigError(
                f"tools: unknown tool {', '.join(map(repr, unknown))} "
                f"(the top-level `tools:` of keel.yaml defines: {known})"
            )

    async def acquire(self, names: list[str]) -> list[Tool]:
        """The named tools, started; each acquire is matched by one `release`."""
        self.check_names(names)
        async with self._lock:
            tools: list[Tool] = []
            try:
                for name in names:
                    tool = self._tools.get(name) or self._build(name)
                    if self._users.get(name, 0) == 0:
                        await tool.start()
                        self._tools[name] = tool
                    self._users[name] = self._users.get(name, 0) + 1
                    tools.append(tool)
            except BaseException:
                await self._release_locked(names[: len(tools)])
                raise
            return tools

    async def release(self, names: list[str]) -> None:
        async with self._lock:
            await self._release_locked(names)

    async def _release_locked(self, names: list[str]) -> None:
        for name in names:
            if self._users.get(name, 0) <= 0:
                continue
            self._users[name] -= 1
            if self._users[name] == 0:
                await self._tools.pop(name).aclose()

    def _build(self, name: str) -> Tool:
        config = self.configs[name]
        cls = load("keel.tools", config.kind, "tool kind")
        options = cls.Options.model_validate(config.model_extra or {})
        return cls(name, options)
