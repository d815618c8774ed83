"""The protocol every tool kind implements, and the error a tool reports to the model."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict

from keel.errors import KeelError

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class ToolOptions(BaseModel):
    """Base for a tool's options in keel.yaml: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


class ToolError(KeelError):
    """A failure meant for the model (bad arguments, an HTTP 404, a timeout, a busy pool): it
    becomes the tool's result, so the model can correct itself or explain, and the request goes
    on. Should one escape to the edge (a tool used outside the loop), it is a 502."""

    status = 502
    type = "tool_error"
    code = "tool_error"


class Tool(Protocol):
    """One entry of keel.yaml's `tools:`; it offers one or more functions to the model.

    `definitions()` is valid after `start()`. `call` gets arguments the model produced, already
    parsed from JSON into a dict, and returns the result as text (JSON for structured results);
    it raises `ToolError` for anything the model should hear about.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[ToolOptions]]
    name: str

    def __init__(self, name: str, options: ToolOptions) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def definitions(self) -> list[dict]: ...

    async def call(self, function_name: str, arguments: dict) -> str: ...


def function_definition(name: str, description: str, parameters: dict) -> dict:
    """An OpenAI `tools[]` entry."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


class ArgumentChecker:
    """Validates the model's arguments against a function's JSON schema, naming each problem."""

    def __init__(self, schema: dict) -> None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        self._validator = Draft202012Validator(schema)

    def check(self, arguments: dict) -> None:
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            problems = "; ".join(_describe(e) for e in errors[:5])
            raise ToolError(f"invalid arguments: {problems}")


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.path)
    return f"{where}: {error.message}" if where else error.message
