"""The `mcp` tool: the tools of an MCP server, listed and called through the official `mcp` SDK.

The server is a subprocess spoken to over stdio (`command`, `env`, `cwd`) or a streamable HTTP
endpoint (`url`). Each of its tools becomes one function offered to the model, named
`<entry>__<tool>` (the keel.yaml entry, two underscores, the server's tool name) so two servers
cannot clash; `prefix: false` offers the server's own names instead. `include` limits which
tools are offered.

The SDK's session lives in anyio context managers that must be entered and left by one task, so
one background task owns the connection for the tool's whole life and serves calls handed to it
through a queue; any request task may call. A server that dies fails the calls made after, as
tool results; Keel does not restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import orjson
from pydantic import Field, model_validator

from keel.errors import ConfigError
from keel.grounding.tools.base import (
    FUNCTION_NAME,
    ArgumentChecker,
    ToolError,
    ToolOptions,
    function_definition,
)

INSTALL_HINT = "the mcp tool kind needs the MCP SDK: pip install 'keel-llm[mcp]'"


class MCPOptions(ToolOptions):
    command: list[str] | None = Field(None, min_length=1, description="stdio server: argv")
    env: dict[str, str] = Field(default_factory=dict, description="added to the environment")
    cwd: str | None = None
    url: str | None = Field(None, description="streamable HTTP endpoint, e.g. http://h:8000/mcp")
    include: list[str] | None = Field(None, description="offer only these tools of the server")
    prefix: bool = Field(True, description="name functions <entry>__<tool>")
    timeout_s: float = Field(30.0, gt=0, description="per call")
    start_timeout_s: float = Field(30.0, gt=0, description="connect, initialize, list tools")

    @model_validator(mode="after")
    def _one_transport(self) -> MCPOptions:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (streamable HTTP)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self


class MCPTool:
    """All (or the `include`d) tools of one MCP server."""

    kind: ClassVar[str] = "mcp"
    Options: ClassVar[type[ToolOptions]] = MCPOptions

    def __init__(self, name: str, options: MCPOptions) -> None:
        self.name = name
        self.options = options
        self._functions: dict[str, tuple[str, dict]] = {}  # function -> (server tool, definition)
        self._checkers: dict[str, ArgumentChecker] = {}
        self._jobs: asyncio.Queue = asyncio.Queue()
        self._owner: asyncio.Task | None = None
        self._failure: str | None = None

    async def start(self) -> None:
        if self._owner is not None:
            return
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own_session(ready), name=f"mcp:{self.name}")
        try:
            tools = await asyncio.wait_for(asyncio.shield(ready), self.options.start_timeout_s)
        except Exception as exc:
            await self.aclose()
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else _reason(exc)
            raise ConfigError(f"tools.{self.name}: could not start the MCP server: {reason}") from None
        self._offer(tools)

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        self._jobs.put_nowait(None)
        try:
            await asyncio.wait_for(owner, 10)
        except (TimeoutError, asyncio.CancelledError):
            pass  # wait_for cancelled it: its context managers still ran their exits
        except Exception:
            pass  # already reported through `ready` or `_failure`

    def definitions(self) -> list[dict]:
        return [definition for _, definition in self._functions.values()]

    async def call(self, function_name: str, arguments: dict) -> str:
        if function_name not in self._functions:
            raise ToolError(f"no tool {function_name!r} on MCP server {self.name!r}")
        self._checkers[function_name].check(arguments)
        if self._owner is None or self._owner.done():
            raise ToolError(f"MCP server {self.name!r} is not running: {self._failure or 'closed'}")
        tool_name = self._functions[function_name][0]
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((tool_name, arguments, answer))
        try:
            result = await asyncio.wait_for(answer, self.options.timeout_s)
        except TimeoutError:
            raise ToolError(f"no result within {self.options.timeout_s:g} s") from None
        return result_text(result)

    def _offer(self, tools: list) -> None:
        wanted = set(self.options.include) if self.options.include is not None else None
        found = {t.name for t in tools}
        missing = sorted((wanted or set()) - found)
        if missing:
            raise ConfigError(
                f"tools.{self.name}.include: the server has no tool {', '.join(missing)} "
                f"(it has: {', '.join(sorted(found))})"
            )
        for tool in tools:
            if wanted is not None and tool.name not in wanted:
                continue
            function = f"{self.name}__{tool.name}" if self.options.prefix else tool.name
            if not FUNCTION_NAME.match(function):
                raise ConfigError(f"tools.{self.name}: {function!r} is not a valid function name")
            schema = _field(tool, "input_schema", "inputSchema") or {"type": "object"}
            schema.setdefault("properties", {})
            description = tool.description or ""
            self._functions[function] = (tool.name, function_definition(function, description, schema))
            self._checkers[function] = ArgumentChecker(schema)

    async def _own_session(self, ready: asyncio.Future) -> None:
        """The one task that enters, uses and leaves the SDK's context managers."""
        try:
            from mcp import ClientSession
        except ImportError:
            ready.set_exception(ImportError(INSTALL_HINT))
            return
        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
                await session.initialize()
                ready.set_result(await _list_tools(session))
                await self._serve(session)
        except BaseException as exc:
            self._failure = _reason(exc)
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._fail_waiting()

    async def _serve(self, session: Any) -> None:
        import anyio

        async with anyio.create_task_group() as group:
            while (job := await self._jobs.get()) is not None:
                group.start_soon(self._run_job, session, *job)
            group.cancel_scope.cancel()

    async def _run_job(self, session: Any, tool: str, arguments: dict, answer: asyncio.Future):
        try:
            result = await session.call_tool(tool, arguments)
        except Exception as exc:
            if not answer.done():
                answer.set_exception(ToolError(f"the MCP server failed: {_reason(exc)}"))
        else:
            if not answer.done():  # the caller may have timed out or gone away
                answer.set_result(result)

    def _transport(self):
        if self.options.url is not None:
            from mcp.client import streamable_http

            connect = getattr(streamable_http, "streamable_http_client", None) or streamable_http.streamablehttp_client
            return connect(self.options.url)
        from mcp import StdioServerParameters, stdio_client

        program, *args = self.options.command
        params = StdioServerParameters(
            command=program, args=args, env=self.options.env or None, cwd=self.options.cwd
        )
        return stdio_client(params)

    def _fail_waiting(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None and not job[2].done():
                job[2].set_exception(ToolError(f"MCP server {self.name!r} stopped"))


async def _list_tools(session: Any) -> list:
    tools, cursor = [], None
    while True:
        if cursor is None:
            page = await session.list_tools()
        else:
            from mcp.types import PaginatedRequestParams

            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
        tools.extend(page.tools)
        cursor = _field(page, "next_cursor", "nextCursor")
        if not cursor:
            return tools


def result_text(result: Any) -> str:
    """Text parts joined; structured content as JSON when there is no text; errors raised."""
    parts = []
    for item in result.content or ():
        kind = getattr(item, "type", None)
        if kind == "text":
            parts.append(item.text)
        elif kind == "resource" and getattr(item.resource, "text", None) is not None:
            parts.append(item.resource.text)
        else:
            parts.append(f"[{kind} content omitted]")
    text = "\n".join(parts)
    structured = _field(result, "structured_content", "structuredContent")
    if not text and structured is not None:
        text = orjson.dumps(structured).decode()
    if _field(result, "is_error", "isError"):
        raise ToolError(text or "the tool reported an error")
    return text


def _field(obj: Any, *names: str) -> Any:
    # mcp 2 names fields in snake_case, mcp 1 in camelCase.
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _reason(exc: BaseException) -> str:
    # anyio wraps failures of task groups in exception groups; the first leaf says what happened.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
