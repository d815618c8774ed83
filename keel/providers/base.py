"""The one protocol every provider implements."""

from __future__ import annotations

from typing import AsyncIterator, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


class ProviderOptions(BaseModel):
    """Base for a provider's options in keel.yaml: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


class Provider(Protocol):
    """Produces OpenAI-shaped chat completions.

    `body` is the validated OpenAI request as a dict (layers may have changed it); `model` is the
    provider's own name for the model. `chat` returns a `chat.completion` dict; `stream` yields
    `chat.completion.chunk` dicts and always ends with a usage chunk (`choices: []`) when the
    provider can count tokens: the HTTP edge forwards it only if the client asked for it, and
    the trace keeps it either way. Errors are `keel.errors.KeelError`s.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[ProviderOptions]]

    def __init__(self, name: str, options: ProviderOptions) -> None: ...

    async def start(self) -> None:
        """Open connections or load weights; called once before serving."""

    async def aclose(self) -> None:
        """Release what `start` took."""

    def check(self, body: dict, model: str) -> None:
        """Raise `UnsupportedParameter` for a request this provider cannot honour."""

    async def chat(self, body: dict, model: str) -> dict: ...

    def stream(self, body: dict, model: str) -> AsyncIterator[dict]: ...
