"""Does a model's answer hold the JSON promise of its request's `response_format`?

Shared by the `json_mode` layer (keel.consistency) and the `json_schema` guard
(keel.guardrails), which must agree on what valid means; layers never import each other, so it
lives here, at the pipeline they both build on.
"""

from __future__ import annotations

from functools import lru_cache

import orjson
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from keel.errors import InvalidRequest

SCHEMA_PARAM = "response_format.json_schema.schema"


def expected_schema(body: dict) -> tuple[bool, dict | None]:
    """(JSON asked for?, the schema if one was given)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return False, None
    if fmt.get("type") == "json_object":
        return True, None
    if fmt.get("type") == "json_schema":
        return True, (fmt.get("json_schema") or {}).get("schema")
    return False, None


def problem_with(content: str | None, schema: dict | None) -> str | None:
    """None when `content` is valid JSON (matching `schema`), else what is wrong with it."""
    if content is None:
        return "the answer has no content"
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    if schema is None:
        return None if isinstance(value, dict) else "expected a JSON object"
    try:
        error = next(iter(_validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
                          .iter_errors(value)), None)
    except (Unresolvable, RecursionError) as exc:
        # The request edge (`keel.pipeline.schemas`) refuses such schemas; one that still
        # gets here (a $ref loop) is the client's, and says so rather than failing as a bug.
        why = "recurses without end" if isinstance(exc, RecursionError) else f"has {exc}"
        raise InvalidRequest(f"the JSON schema {why}", param=SCHEMA_PARAM) from None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"does not match the schema at {where}: {error.message}"


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Draft202012Validator:
    # An empty registry: a $ref the schema cannot resolve itself is never fetched remotely.
    return Draft202012Validator(orjson.loads(schema_json), registry=Registry())
