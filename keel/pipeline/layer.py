"""The layer protocol, and the registry that finds layers by name (`keel.layers` entry points)."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Awaitable, Callable, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from keel.errors import ConfigError
from keel.pipeline.context import Context, Result

Next = Callable[[Context], Awaitable[Result]]

_BUILTIN = {
    "json_mode": "keel.consistency.json_mode:JSONModeLayer",
}


class LayerOptions(BaseModel):
    """Base for a layer's options in keel.yaml: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


class Layer(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[LayerOptions]]

    def __init__(self, options: LayerOptions) -> None: ...

    async def __call__(self, ctx: Context, next: Next) -> Result: ...


@cache
def layer_names() -> dict[str, str]:
    names = dict(_BUILTIN)
    for ep in entry_points(group="keel.layers"):
        names[ep.name] = ep.value
    return names


def layer_class(name: str) -> type:
    target = layer_names().get(name)
    if target is None:
        known = ", ".join(sorted(layer_names()))
        raise ConfigError(f"unknown layer {name!r}; expected one of: {known}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
