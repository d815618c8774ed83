"""The `json_schema` guard: the answer parses and validates, or the verdict explains why."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from keel.guardrails.base import GuardContext
from keel.guardrails.json_schema import JSONSchemaGuard, JSONSchemaOptions
from keel.providers.fake import FakeProvider

TICKET = {"type": "object", "required": ["category", "priority"],
          "properties": {"category": {"type": "string"},
                         "priority": {"type": "integer", "minimum": 1, "maximum": 3}}}


def guard(**options) -> JSONSchemaGuard:
    return JSONSchemaGuard("json_schema", JSONSchemaOptions(**options))


def ctx(body=None) -> GuardContext:
    return GuardContext("output", body or {}, None, {})


def asking(schema) -> dict:
    return {"messages": [{"role": "user", "content": "classify"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": schema}}}


async def test_valid_answer_passes():
    verdict = await guard(schema=TICKET).check('{"category": "wifi", "priority": 2}', ctx())
    assert verdict.action == "pass" and not verdict.reasons


async def test_invalid_json_is_repaired_with_the_schema_spelled_out():
    verdict = await guard(schema=TICKET).check('Sure! {"category": "wifi"', ctx())
    assert verdict.action == "repair"
    assert verdict.reasons[0].startswith("not valid JSON")
    assert "Reply again with only the corrected JSON" in verdict.text
    # The model never saw the option's schema in its request, so the repair shows it.
    assert orjson.dumps(TICKET).decode() in verdict.text


async def test_schema_violation_names_the_place():
    verdict = await guard(schema=TICKET).check('{"category": "wifi", "priority": 7}', ctx())
    assert verdict.action == "repair"
    assert verdict.reasons == [
        "does not match the schema at priority: 7 is greater than the maximum of 3"]
    assert "at priority" in verdict.text


async def test_request_response_format_is_the_schema_when_no_option():
    g = guard(action="block")
    verdict = await g.check('{"category": "wifi"}', ctx(asking(TICKET)))
    assert verdict.action == "block"
    assert "'priority' is a required property" in verdict.reasons[0]
    # The request already carries the schema: the repair does not repeat it.
    assert '"required"' not in verdict.text
    assert (await g.check('{"category": "a", "priority": 1}', ctx(asking(TICKET)))).action \
        == "pass"


async def test_json_object_requests_need_an_object_and_plain_chat_passes():
    g = guard(action="flag")
    json_object = {"messages": [], "response_format": {"type": "json_object"}}
    assert (await g.check('{"a": 1}', ctx(json_object))).action == "pass"
    verdict = await g.check("[1, 2]", ctx(json_object))
    assert verdict.action == "flag" and verdict.reasons == ["expected a JSON object"]
    # A request that asks for no JSON, on a guard without a schema of its own: nothing to check.
    verdict = await g.check("Sure! Here are the steps.", ctx())
    assert verdict.action == "pass" and verdict.reasons == ["the request asked for no JSON"]


async def test_fake_models_answers():
    """The `json` fake model answers a valid instance; `bad-json` never does."""
    provider, body = FakeProvider(), asking(TICKET)
    good = await provider.chat(body, "json")
    bad = await provider.chat(body, "bad-json")
    g = guard()
    assert (await g.check(good["choices"][0]["message"]["content"], ctx(body))).action == "pass"
    assert (await g.check(bad["choices"][0]["message"]["content"], ctx(body))).action \
        == "repair"


def test_options():
    opts = JSONSchemaOptions()
    assert (opts.action, opts.attempts, opts.schema_) == ("repair", 2, None)
    with pytest.raises(ValidationError, match="not a valid JSON schema"):
        JSONSchemaOptions(schema={"type": "no-such-type"})
    with pytest.raises(ValidationError):
        JSONSchemaOptions(action="redact")
    with pytest.raises(ValidationError):
        JSONSchemaOptions(attempts=9)
