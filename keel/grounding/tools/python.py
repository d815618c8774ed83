"""The `python` tool: an importable function; its signature is the schema, its docstring the
description.

Arguments are validated and coerced by pydantic from the type hints (`Annotated[int,
Field(description=...)]` documents a parameter). An async function is awaited. A sync one runs
on the tool's own threads (`ToolThreads`), never the event loop's shared executor: Python
cannot stop a thread, so a call that times out keeps its thread until the function returns,
and a few hung calls must not starve the knowledge store, feedback or shutdown of threads. At
most `max_threads` run at once; a call that finds them all busy for `pool_wait_s` is a tool
error ("tool pool busy") that the model reads. The threads are daemons: a hung function does
not hold up the process's exit. A `str` result is returned as is, anything else as JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any, ClassVar, get_type_hints

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from keel.grounding.tools.base import ToolError, ToolOptions, function_definition
from keel.plugins import import_callable


class PythonOptions(ToolOptions):
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$", description='"package.module:function"')
    description: str | None = Field(None, description="default: the function's docstring")
    timeout_s: float | None = Field(None, gt=0, description="the model hears of a timeout")
    max_threads: int = Field(4, ge=1, le=256, description="sync calls running at once; a call "
                             "that timed out holds its thread until the function returns")
    pool_wait_s: float = Field(1.0, ge=0, description="how long a call waits for a free thread "
                               "before it fails as 'tool pool busy'")


class PythonTool:
    """One function backed by a Python callable."""

    kind: ClassVar[str] = "python"
    Options: ClassVar[type[ToolOptions]] = PythonOptions

    def __init__(self, name: str, options: PythonOptions) -> None:
        self.name = name
        self.options = options
        self._function: Callable | None = None
        self._model: type[BaseModel] | None = None
        self._threads = ToolThreads(name, options.max_threads, options.pool_wait_s)

    async def start(self) -> None:
        if self._function is None:
            self._function = import_callable(self.options.function, f"tools.{self.name}.function")
            self._model = arguments_model(self._function)

    async def aclose(self) -> None:
        pass

    def definitions(self) -> list[dict]:
        function, model = self._loaded()
        description = self.options.description or inspect.getdoc(function) or ""
        return [function_definition(self.name, description, parameters_schema(model))]

    async def call(self, function_name: str, arguments: dict) -> str:
        function, model = self._loaded()
        try:
            parsed = model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(f"invalid arguments: {_problems(exc)}") from None
        # Attributes, not model_dump(): nested pydantic/dataclass arguments keep their types.
        kwargs = {name: getattr(parsed, name) for name in model.model_fields}
        if inspect.iscoroutinefunction(function):
            pending = function(**kwargs)
        else:
            pending = await self._threads.start(function, kwargs)
        try:
            result = await asyncio.wait_for(pending, self.options.timeout_s)
        except TimeoutError:
            raise ToolError(f"no result within {self.options.timeout_s:g} s") from None
        return result if isinstance(result, str) else pydantic_core.to_json(result).decode()

    def _loaded(self) -> tuple[Callable, type[BaseModel]]:
        if self._function is None or self._model is None:
            raise RuntimeError(f"tool {self.name!r} is not started")
        return self._function, self._model


class ToolThreads:
    """At most `size` daemon threads running one tool's sync functions."""

    def __init__(self, name: str, size: int, wait_s: float) -> None:
        self.name = name
        self.size = size
        self.wait_s = wait_s
        self._free = asyncio.Semaphore(size)

    async def start(self, function: Callable, kwargs: dict) -> asyncio.Future:
        """Start `function(**kwargs)` on a thread once one is free; its result's future."""
        if not self._free.locked():
            await self._free.acquire()  # free now: returns at once
        elif self.wait_s <= 0 or not await _acquired(self._free, self.wait_s):
            raise ToolError(
                f"tool pool busy: all {self.size} threads of tool {self.name!r} are still "
                f"running earlier calls; try again later"
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def work() -> None:
            outcome: tuple[Callable, Any] | None = None
            try:
                outcome = (future.set_result, function(**kwargs))
            except Exception as exc:
                outcome = (future.set_exception, exc)
            finally:
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome, self._free)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    pass

        try:
            threading.Thread(target=work, name=f"keel-tool-{self.name}", daemon=True).start()
        except BaseException:
            self._free.release()
            raise
        return future


def _settle(future: asyncio.Future, outcome, free: asyncio.Semaphore) -> None:
    free.release()
    if outcome is not None and not future.done():  # done: cancelled by a timeout
        setter, value = outcome
        setter(value)
    elif outcome is None and not future.done():
        future.set_exception(RuntimeError("the tool's thread ended without a result"))


async def _acquired(semaphore: asyncio.Semaphore, timeout: float) -> bool:
    try:
        await asyncio.wait_for(semaphore.acquire(), timeout)
    except TimeoutError:
        return False
    return True


def arguments_model(function: Callable) -> type[BaseModel]:
    """A pydantic model of the function's parameters (`*args` / `**kwargs` are not offered)."""
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(function).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(name, Any)
        default = ... if param.default is param.empty else param.default
        fields[name] = (annotation, default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{function.__name__}_arguments", __config__=config, **fields)


def parameters_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema without pydantic's generated titles (noise in a prompt)."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in (schema.get("properties") or {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)
