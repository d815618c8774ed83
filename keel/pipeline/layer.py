"""The layer protocol, and how a layer is found by name (the `keel.layers` entry point group)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from keel.errors import UnsupportedParameter
from keel.pipeline.context import Context, Result
from keel.plugins import load

Next = Callable[[Context], Awaitable[Result]]


class LayerOptions(BaseModel):
    """Base for a layer's options in keel.yaml: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


class Layer(Protocol):
    """A step of the request path. `runtime` (a `keel.pipeline.runtime.Runtime`) gives access to
    the store and embedders; a layer that holds resources may also define `async start()` and
    `async aclose()`, which the gateway calls once. A layer that cannot honour some requests
    defines `check(body)`, raising `UnsupportedParameter`: the gateway calls it at the request
    edge (`keel.pipeline.assemble.check_request`), before anything runs or a stream starts."""

    name: ClassVar[str]
    Options: ClassVar[type[LayerOptions]]

    def __init__(self, options: LayerOptions, runtime: Any) -> None: ...

    async def __call__(self, ctx: Context, next: Next) -> Result: ...


def layer_class(name: str) -> type:
    return load("keel.layers", name, "layer")


def refuse_several_choices(body: dict, layer: str, why: str) -> None:
    """A 400 for `n` > 1 on a layer that handles one choice (its reason in `why`)."""
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise UnsupportedParameter(
            f"n={n} is not supported on this model: its {layer} layer {why}; send n=1 "
            "(or leave n out) and make n requests for n answers",
            param="n",
        )
