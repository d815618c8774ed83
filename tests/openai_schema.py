"""Validate Keel's responses against the official OpenAI schemas kept in tests/data/openai/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

# Extracted from OpenAI's OpenAPI description by tests/data/openai/extract_schemas.py.
SPEC = Path(__file__).resolve().parent / "data" / "openai" / "openai-schemas.json"


@cache
def _registry() -> tuple[Registry, dict]:
    document = _nullable_to_null(json.loads(SPEC.read_text()))
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
