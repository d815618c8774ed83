"""The `json_schema` guard: the answer must be JSON that validates against a schema.

The schema is the guard's `schema` option (then every answer must match it), or else the
request's own `response_format`: json_schema validates against its schema, json_object asks for
a JSON object, and a request that asks for no JSON at all passes (so one guarded model can
serve chat and JSON alike). An answer that fails is, by
default, repaired: the layer asks the model again with `verdict.text` — what is wrong, where,
and (when the model never saw it in the request) the schema — up to `attempts` times. `block`
and `flag` are the other actions.

The checking itself is `keel.pipeline.json_check`, the one the `json_mode` layer uses, so
the two agree on what valid means.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator

from keel.pipeline.json_check import expected_schema, problem_with
from keel.guardrails.base import GuardContext, GuardOptions, Verdict

REPAIR = ("Your previous answer is invalid: {problem}. Reply again with only the "
          "corrected JSON, and nothing else: no explanation, no code fences.")
SCHEMA = " It must validate against this JSON schema: {schema}"


class JSONSchemaOptions(GuardOptions):
    action: str = Field("repair", pattern="^(repair|block|flag)$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    attempts: int = Field(2, ge=0, le=5, description="repairs the layer tries before giving up")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema):
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return schema


class JSONSchemaGuard:
    kind: ClassVar[str] = "json_schema"
    Options: ClassVar[type[GuardOptions]] = JSONSchemaOptions

    def __init__(self, name: str, options: JSONSchemaOptions, runtime: Any = None) -> None:
        self.name = name
        self.options = options

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        schema = self.options.schema_
        told = False  # did the request itself show the model the schema?
        if schema is None:
            wants_json, schema = expected_schema(ctx.body)
            if not wants_json:
                return Verdict(self.name, reasons=["the request asked for no JSON"])
            told = schema is not None
        problem = problem_with(text, schema)
        if problem is None:
            return Verdict(self.name)
        repair = REPAIR.format(problem=problem)
        if schema is not None and not told:
            repair += SCHEMA.format(schema=orjson.dumps(schema).decode())
        return Verdict(self.name, self.options.action, reasons=[problem],
                       text=repair)
