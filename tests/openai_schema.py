"""Validate Keel's responses against the official OpenAI OpenAPI description in shared/data."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

# The project's shared/ folder sits beside the repository (as on CI); KEEL_OPENAPI_SPEC overrides.
SPEC = Path(os.environ.get("KEEL_OPENAPI_SPEC")
            or Path(__file__).resolve().parents[2] / "shared" / "data" / "openai-openapi.yaml")


@cache
def _registry() -> tuple[Registry, dict]:
    if not SPEC.exists():
        raise FileNotFoundError(
            f"the OpenAI OpenAPI description is not at {SPEC}; set KEEL_OPENAPI_SPEC to its path")
    document = _nullable_to_null(yaml.safe_load(SPEC.read_text()))
    resource = Resource.from_contents(document, default_specification=_DRAFT)
    return Registry().with_resource("openai", resource), document


_DRAFT = __import__("referencing.jsonschema", fromlist=["DRAFT202012"]).DRAFT202012


def validator(name: str) -> Draft202012Validator:
    registry, _ = _registry()
    return Draft202012Validator({"$ref": f"openai#/components/schemas/{name}"}, registry=registry)


def assert_valid(name: str, instance: dict) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name} invalid: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
    )


def _nullable_to_null(node):
    """The spec still marks some fields OpenAPI-3.0 style (`nullable: true`), which JSON Schema
    2020-12 ignores; OpenAI sends null there (e.g. a chunk's `finish_reason`), so allow it."""
    if isinstance(node, list):
        return [_nullable_to_null(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_null(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        return {"anyOf": [node, {"type": "null"}]}
    return node
