"""The JSON-schema extensions clients send (issue 7, defect 12), over HTTP.

- `response_format: {"type": "json_object", "schema": S}` (llama.cpp server; instructor's
  JSON_SCHEMA mode) is honoured as a json_schema response_format: validated and repaired on a
  remote provider, grammar-bound on the embedded engine;
- vLLM's `guided_json` is the same; `guided_choice` / `guided_regex` reach a remote upstream
  untouched and are refused (400 `unsupported_parameter`) on the embedded engine.

A recording upstream on a real socket answers what each test scripts and keeps the bodies it
received, so the tests see what Keel sent.
"""

from __future__ import annotations

import json

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from jsonschema import Draft202012Validator

from keel.api import create_app
from keel.config import CompletionDefaults, KeelConfig, ModelConfig, ProviderConfig
from keel.gateway import Gateway
from keel.providers import shapes
from tests.servers import http, keel_server

MOVIE = {"type": "object", "required": ["title", "year"], "additionalProperties": False,
         "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}}
VALID = '{"title": "Alien", "year": 1979}'
WRONG = '{"title": "Alien"}'  # JSON, an object, but not the schema's: plain JSON mode passes it
USER = [{"role": "user", "content": "a movie as JSON"}]


class Upstream:
    """Answers each call with the next scripted content; records the bodies it got."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        content = self.answers.pop(0) if self.answers else VALID
        return web.json_response(shapes.completion(body["model"], content))


@pytest.fixture
async def keel(tmp_path):
    upstream = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handle)
    up_server = TestServer(app, host="127.0.0.1")
    await up_server.start_server()
    config = KeelConfig(
        state_dir=tmp_path,
        providers={"up": ProviderConfig(kind="openai",
                                        base_url=str(up_server.make_url("/v1")))},
        models={"m": ModelConfig(provider="up", model="m"),
                # a route whose keel.yaml defaults use the extension themselves
                "d": ModelConfig(provider="up", model="d", defaults=CompletionDefaults(
                    response_format={"type": "json_object", "schema": MOVIE}))},
    )
    server = TestServer(create_app(Gateway(config)), host="127.0.0.1")
    await server.start_server()
    async with ClientSession() as session:
        async def post(**fields) -> tuple[int, dict]:
            async with session.post(server.make_url("/v1/chat/completions"),
                                    json={"model": "m", "messages": USER, **fields}) as r:
                return r.status, await r.json()

        yield post, upstream
    await server.close()
    await up_server.close()


def content(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


async def test_json_object_with_a_schema_is_validated_and_repaired_on_a_remote_provider(keel):
    post, upstream = keel
    upstream.answers = [WRONG, VALID]
    status, body = await post(response_format={"type": "json_object", "schema": MOVIE})
    assert status == 200, body
    assert json.loads(content(body)) == {"title": "Alien", "year": 1979}
    # The upstream was asked with the schema, as OpenAI's json_schema, then asked to repair.
    first, repair = upstream.bodies
    assert first["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": MOVIE}}
    assert "does not match the schema" in repair["messages"][-1]["content"]


async def test_json_object_with_a_schema_fails_clearly_when_repair_does_not_help(keel):
    post, upstream = keel
    upstream.answers = [WRONG, WRONG]
    status, body = await post(response_format={"type": "json_object", "schema": MOVIE})
    assert status == 502, body
    assert body["error"]["code"] == "invalid_json_output"
    assert "year" in body["error"]["message"]


async def test_json_object_without_a_schema_stays_plain_json_mode(keel):
    post, upstream = keel
    upstream.answers = [WRONG]
    for fmt in ({"type": "json_object"}, {"type": "json_object", "schema": None}):
        upstream.answers = [WRONG]
        status, body = await post(response_format=fmt)
        assert status == 200 and content(body) == WRONG
        assert upstream.bodies[-1]["response_format"] == {"type": "json_object"}


async def test_an_extension_in_a_routes_defaults_is_honoured_too(keel):
    post, upstream = keel
    upstream.answers = [WRONG, VALID]
    status, body = await post(model="d")
    assert status == 200, body
    assert json.loads(content(body))["year"] == 1979  # WRONG was repaired against the schema
    assert upstream.bodies[0]["response_format"]["json_schema"]["schema"] == MOVIE


@pytest.mark.parametrize("guided", [MOVIE, json.dumps(MOVIE)], ids=["object", "string"])
async def test_guided_json_is_a_json_schema_response_format(keel, guided):
    post, upstream = keel
    upstream.answers = [WRONG, VALID]
    status, body = await post(guided_json=guided)
    assert status == 200, body
    assert json.loads(content(body))["year"] == 1979
    sent = upstream.bodies[0]
    assert "guided_json" not in sent
    assert sent["response_format"]["json_schema"]["schema"] == MOVIE


@pytest.mark.parametrize("fields,message", [
    ({"guided_json": "{not json"}, "not valid JSON"),
    ({"guided_json": "[1, 2]"}, "expected a JSON schema object"),
    ({"guided_json": MOVIE, "response_format": {"type": "json_object"}}, "send one of them"),
])
async def test_bad_guided_json_is_a_400_naming_it(keel, fields, message):
    post, upstream = keel
    status, body = await post(**fields)
    assert status == 400, body
    assert body["error"]["param"] == "guided_json" and message in body["error"]["message"]
    assert upstream.bodies == []


async def test_guided_choice_and_regex_reach_a_remote_upstream_untouched(keel):
    post, upstream = keel
    upstream.answers = ["yes"]
    status, body = await post(guided_choice=["yes", "no"], guided_regex="yes|no")
    assert status == 200, body
    assert upstream.bodies[0]["guided_choice"] == ["yes", "no"]
    assert upstream.bodies[0]["guided_regex"] == "yes|no"


@pytest.mark.parametrize("field,value", [("guided_choice", ["yes", "no"]),
                                         ("guided_regex", "yes|no")])
def test_guided_choice_and_regex_are_refused_by_the_local_engine(field, value):
    from keel.errors import UnsupportedParameter
    from tests.providers.test_local_units import _model_free_planner

    with pytest.raises(UnsupportedParameter) as caught:
        _model_free_planner().check({"messages": USER, field: value})
    assert caught.value.param == field and caught.value.status == 400


@pytest.mark.model
def test_json_object_with_a_schema_is_grammar_bound_on_the_local_engine(tmp_path):
    with keel_server(tmp_path) as base_url:  # the embedded defaults: smollm2
        status, _, body = http("POST", f"{base_url}/chat/completions", {
            "model": "smollm2", "messages": USER, "max_tokens": 60, "seed": 1,
            "response_format": {"type": "json_object", "schema": MOVIE}})
        assert status == 200, body
        Draft202012Validator(MOVIE).validate(json.loads(content(body)))
        status, _, body = http("POST", f"{base_url}/chat/completions", {
            "model": "smollm2", "messages": USER, "max_tokens": 5,
            "guided_choice": ["yes", "no"]})
        assert status == 400 and body["error"]["param"] == "guided_choice", body
