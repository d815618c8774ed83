"""Check a JSON schema a client sent, at the request edge, before anything relies on it.

A schema the validator cannot use (`{"type": "strin"}`, a `$ref` to nothing) must fail the
request with a 400 naming the field, not later, mid-answer or mid-stream. Only references inside
the schema itself resolve: Keel never fetches a remote `$ref` on a client's behalf.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from keel.errors import InvalidRequest

_REF_KEYWORDS = ("$ref", "$dynamicRef")


def check_client_schema(schema: Any, param: str) -> None:
    """Raise `InvalidRequest` (param `param`) unless `schema` is a usable JSON schema
    (draft 2020-12, the draft Keel validates answers with) whose references all resolve."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest(f"{param} must be a JSON schema (an object)", param=param)
    problem = _problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if problem is not None:
        raise InvalidRequest(f"{param} {problem}", param=param)


@lru_cache(maxsize=256)
def _problem(schema_json: bytes) -> str | None:
    # Clients send the same few schemas again and again: each is checked once.
    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
        if isinstance(schema, dict):
            _check_refs(schema)
    except RecursionError:
        return "is nested too deeply"
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"is not a valid JSON schema{f' at {where}' if where else ''}: {exc.message}"
    except Unresolvable as exc:
        return (f"has a $ref that does not resolve within the schema: {exc} "
                "(remote references are not fetched)")
    return None


def _check_refs(schema: dict) -> None:
    resource = DRAFT202012.create_resource(schema)
    base = resource.id() or ""
    resolver = Registry().with_resource(base, resource).resolver(base_uri=base)
    _walk(resource, resolver)


def _walk(resource: Resource, resolver) -> None:
    contents = resource.contents
    if isinstance(contents, dict):
        for keyword in _REF_KEYWORDS:
            if isinstance(contents.get(keyword), str):
                resolver.lookup(contents[keyword])
    for sub in resource.subresources():
        _walk(sub, resolver.in_subresource(sub))


def check_request_schemas(body: dict) -> None:
    """Check every JSON schema a Chat Completions body carries, each named by its own field:
    `response_format` (json_schema, and json_object's `schema` extension), vLLM's
    `guided_json`, and the `parameters` of each of `tools`. Call on a body whose types
    `validate_chat_request` has accepted, before extensions are rewritten."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if schema is not None:
                check_client_schema(schema, "response_format.json_schema.schema")
        elif fmt.get("type") == "json_object" and fmt.get("schema") is not None:
            check_client_schema(fmt["schema"], "response_format.schema")
    guided = body.get("guided_json")
    if isinstance(guided, str):
        try:
            guided = orjson.loads(guided)
        except orjson.JSONDecodeError:
            guided = None  # the extension's own parser reports it
    if isinstance(guided, dict):
        check_client_schema(guided, "guided_json")
    for i, tool in enumerate(body.get("tools") or ()):
        parameters = (tool.get("function") or {}).get("parameters")
        if parameters is not None:
            check_client_schema(parameters, f"tools[{i}].function.parameters")
