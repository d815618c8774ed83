"""Structured-output graders: `json_valid` (the output parses as JSON) and `json_schema` (it
parses and validates against a JSON Schema, given inline or as a file path).

With `extract: true` the JSON may sit in a ```json fence or in prose around it; by default the
whole output must be JSON, which is what a client calling `json.loads` on it needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import exceptions as schema_errors
from jsonschema import validators
from pydantic import ConfigDict, Field

from keel.errors import ConfigError
from keel.evals.base import Grade, GraderOptions, Judge, Output, Sample
from keel.evals.graders.common import BaseGrader, find_json, verdict


class JSONOptions(GraderOptions):
    extract: bool = Field(False, description="find the JSON inside fences or surrounding text")


def parse(text: str, extract: bool) -> Any:
    return find_json(text) if extract else json.loads(text)


class JSONValidGrader(BaseGrader):
    kind = "json_valid"
    Options = JSONOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        try:
            parse(output.text, self.options.extract)
        except ValueError as exc:
            return verdict(False, problem=f"not valid JSON: {exc}")
        return verdict(True)


class JSONSchemaOptions(JSONOptions):
    model_config = ConfigDict(populate_by_name=True)

    # `schema` would shadow a BaseModel method, hence the alias.
    json_schema: dict[str, Any] | str = Field(
        alias="schema", description="a JSON Schema, or the path of a .json/.yaml file with one")


class JSONSchemaGrader(BaseGrader):
    kind = "json_schema"
    Options = JSONSchemaOptions

    def __init__(self, name: str, options: JSONSchemaOptions, judge: Judge | None = None) -> None:
        super().__init__(name, options, judge)
        self.schema = load_schema(options.json_schema)
        validator_class = validators.validator_for(self.schema)
        try:
            validator_class.check_schema(self.schema)
        except schema_errors.SchemaError as exc:
            raise ConfigError(f"grader {name!r}: the schema is not valid: {exc.message}") from None
        self.validator = validator_class(self.schema)

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        try:
            value = parse(output.text, self.options.extract)
        except ValueError as exc:
            return verdict(False, problem=f"not valid JSON: {exc}")
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            return verdict(False, problems=[
                f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in errors[:5]])
        return verdict(True)

    def describe(self) -> dict:
        # The schema itself, not just its path: the audit must survive the file changing.
        return {**super().describe(), "schema": self.schema}


def load_schema(source: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    path = Path(source).expanduser()
    try:
        loaded = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except OSError as exc:
        raise ConfigError(f"cannot read the JSON Schema {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid JSON or YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a JSON Schema must be an object")
    return loaded
