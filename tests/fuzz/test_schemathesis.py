"""Fuzz a live `keel serve` from its own OpenAPI document (GET /openapi.json) with schemathesis.

For every documented operation schemathesis generates requests, valid and invalid, with a fixed
seed (hypothesis `derandomize`) and a fixed example budget, and checks each response:

- `not_a_server_error`: no 500 (the 502/504 of the fake's failing upstream models are expected);
- `status_code_conformance`, `content_type_conformance`, `response_schema_conformance`: the
  response is one the document describes;
- `openai_error_shape` (below): every 4xx/5xx body is `{"error": {message, type, param, code}}`.

The fake provider runs first (cheap: a larger budget), in process and behind the `openai`
provider over a socket, with its store on SQLite and on PostgreSQL; the embedded model second (marked `model`: a handful of examples with
a small `max_tokens`, as each one generates). `KEEL_FUZZ_EXAMPLES=N` deepens the first by hand.
"""

from __future__ import annotations

import json
import os
import urllib.request
from contextlib import ExitStack

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keel.providers.fake_server import serve_fake_upstream
from tests.servers import keel_server
from tests.store.backends import BACKENDS, postgres_schema_url

FAKE_MODELS = ["echo", "json", "bad-json", "bad-json-once", "tool-call", "error-429", "error-503"]
# The same behaviours in process (`fake`) and as a remote upstream over a socket (`openai`
# provider to `keel fake-upstream`), so the upstream client and its error mapping are fuzzed too.
FAKE_CONFIG = "\n".join([
    "providers:",
    "  fake: {{kind: fake}}",
    "  up: {{kind: openai, base_url: '{upstream}'}}",
    "embedders:",
    "  minilm: {{kind: fake, dim: 384}}",  # 384: the moderation classifier's input size  # knowledge and embeddings without loading the ONNX model
    "models:",
    *[f"  {p}/{m}: {{{{provider: {p}, model: {m}}}}}" for p in ("fake", "up") for m in FAKE_MODELS],
    # A pipeline with the knowledge layer (its collection is empty: the "nothing found" path).
    "  up/rag: {{provider: up, model: echo, knowledge: {{collection: fuzz}}}}",
    "",
])
CHAT_MODELS = [f"{p}/{m}" for p in ("fake", "up") for m in FAKE_MODELS] + ["up/rag"]
# A request that stays small on the embedded engine: each example generates tokens.
LOCAL_MAX_TOKENS = 8


@schemathesis.check
def openai_error_shape(ctx, response, case) -> None:
    """Every error answer is OpenAI's error object, whatever the route and the status; in a
    stream, every event is a chunk, an error object, or the closing [DONE]."""
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return _check_events(response.content.decode())
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}")
    _check_error(body, response.status_code)


def _check_events(text: str) -> None:
    data = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert data, f"a stream with no events: {text[:200]!r}"
    for item in data:
        if item == "[DONE]":
            continue
        event = json.loads(item)
        if "error" in event:
            _check_error(event, "stream")
        else:
            assert event.get("object") == "chat.completion.chunk", event


def _check_error(body, status) -> None:
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(error) >= {"message", "type", "param", "code"}, (
        f"{status} body is not OpenAI-shaped: {body!r}")
    assert isinstance(error["message"], str) and isinstance(error["type"], str), body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body


# Every route `keel serve` has (keel/api/*.py add_routes), as (method, OpenAPI path).
SERVED = {
    ("post", "/v1/chat/completions"), ("get", "/v1/models"), ("get", "/v1/models/{model_id}"),
    ("post", "/v1/embeddings"), ("post", "/v1/moderations"), ("get", "/v1/knowledge"),
    ("post", "/v1/knowledge/{collection}/search"),
    ("post", "/v1/knowledge/{collection}/documents"),
    ("delete", "/v1/knowledge/{collection}/documents/{doc_id}"),
    ("post", "/v1/feedback"), ("get", "/v1/feedback"), ("get", "/healthz"),
    ("get", "/readyz"), ("get", "/openapi.json"), ("get", "/metrics"),
    ("post", "/v1/keys"), ("get", "/v1/keys"), ("get", "/v1/keys/{key_id}"),
    ("delete", "/v1/keys/{key_id}"), ("post", "/v1/keys/{key_id}/rotate"),
}

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, openai_error_shape]


def _fetch_document(root: str) -> dict:
    with urllib.request.urlopen(f"{root}/openapi.json", timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _directed(document: dict, models: list[str], *, max_tokens: int | None = None) -> dict:
    """The live document, narrowed where random values would almost never get past the first
    check: `model` is one of the served names (unknown names are fuzzed by the 404 test of the
    models route), and on a slow engine `max_tokens` is small. The rest is fuzzed as served."""
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletionRequest", "EmbeddingRequest"):
        schemas[name]["properties"]["model"] = {"enum": models}
    if max_tokens is not None:
        props = schemas["ChatCompletionRequest"]["properties"]
        props["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": max_tokens}
        props.pop("max_completion_tokens")
        schemas["ChatCompletionRequest"]["required"] = sorted(
            {*schemas["ChatCompletionRequest"].get("required", []), "max_tokens"})
    return document


def _schema(root: str, models: list[str], embedders: list[str], **narrow):
    document = _directed(_fetch_document(root), models, **narrow)
    document["components"]["schemas"]["EmbeddingRequest"]["properties"]["model"] = {
        "enum": embedders}
    # The fake's error-* and bad-json models make Keel answer 502/504 by design (the upstream
    # failed, as documented); 500 is never expected: it is a bug in Keel.
    config = schemathesis.Config.from_dict({"checks": {"not_a_server_error": {
        "expected-statuses": ["2xx", "3xx", "4xx", "502", "503", "504"]}}})
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.config.update(base_url=root, request_timeout=60)
    return schema


@pytest.fixture(scope="module", params=BACKENDS)
def fake_root(request, tmp_path_factory):
    """A `keel serve` on the fake provider, its store on each backend in turn."""
    with serve_fake_upstream() as upstream, ExitStack() as stack:
        config = FAKE_CONFIG.format(upstream=upstream)
        if request.param == "postgres":
            url = stack.enter_context(postgres_schema_url())
            config += f"store: {{url: '{url}'}}\n"
        with keel_server(tmp_path_factory.mktemp("fuzz-fake"), config) as url:
            yield url.removesuffix("/v1")


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    with keel_server(tmp_path_factory.mktemp("fuzz-local")) as url:  # the embedded defaults
        yield url.removesuffix("/v1")


@pytest.fixture(scope="module")
def fake_schema(fake_root):
    return _schema(fake_root, CHAT_MODELS, ["minilm"])


@pytest.fixture(scope="module")
def local_schema(local_root):
    schema = _schema(local_root, ["smollm2"], ["minilm"], max_tokens=LOCAL_MAX_TOKENS)
    return schema


def test_the_document_lists_every_route(fake_root):
    document = _fetch_document(fake_root)
    assert document["openapi"].startswith("3.1")
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == SERVED


def test_the_document_is_valid_openapi(fake_root):
    # Against the OpenAPI 3.1 meta-schema; then every $ref resolves and every operation reads.
    schema = schemathesis.openapi.from_url(f"{fake_root}/openapi.json")
    schema.validate()
    operations = list(schema.get_all_operations())
    assert operations and all(op.ok() for op in operations), [
        op.err() for op in operations if not op.ok()]


# Driven with hypothesis directly (one test per operation and mode) rather than through
# schemathesis' pytest plugin: it gives each operation its own budget and verdict.
SETTINGS = dict(derandomize=True, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))
# KEEL_FUZZ_EXAMPLES raises the budget for a deeper run by hand; CI runs the fixed default.
FAKE_EXAMPLES = int(os.environ.get("KEEL_FUZZ_EXAMPLES", 50))
LOCAL_EXAMPLES = 5


# Operations whose inputs can be invalid (a body or a query): they are fuzzed with invalid data
# too. A path parameter is any non-empty string, so there is no invalid one to send.
NEGATIVE = {op for op in SERVED if op[0] == "post"} | {("get", "/v1/feedback")}
# Operations that random valid input answers 2xx on; a positive run that never gets there is
# only testing the first check, so it fails.
REACHES_2XX = SERVED - {("get", "/v1/models/{model_id}"), ("post", "/v1/feedback"),
                        # a random key id is unknown: 404 key_not_found
                        ("get", "/v1/keys/{key_id}"), ("delete", "/v1/keys/{key_id}"),
                        ("post", "/v1/keys/{key_id}/rotate"),
                        ("delete", "/v1/knowledge/{collection}/documents/{doc_id}"),
                        ("post", "/v1/knowledge/{collection}/search")}
CASES = sorted([(*op, GenerationMode.POSITIVE) for op in SERVED]
               + [(*op, GenerationMode.NEGATIVE) for op in NEGATIVE],
               key=lambda c: (c[1], c[0], c[2].value))


def _fuzz(schema, method: str, path: str, mode: GenerationMode, examples: int) -> list[int]:
    operation = schema[path][method]
    statuses = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, **SETTINGS)
    def run(case):
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    run()
    return statuses


@pytest.mark.parametrize("method,path,mode", CASES,
                         ids=[f"{m}-{p}-{g.value}" for m, p, g in CASES])
def test_fuzz_fake_provider(fake_schema, method, path, mode):
    statuses = _fuzz(fake_schema, method, path, mode, FAKE_EXAMPLES)
    if mode == GenerationMode.POSITIVE and (method, path) in REACHES_2XX:
        assert any(s < 300 for s in statuses), f"never past validation: {sorted(set(statuses))}"


@pytest.mark.model
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=lambda m: m.value)
def test_fuzz_local_provider(local_schema, mode):
    statuses = _fuzz(local_schema, "post", "/v1/chat/completions", mode, LOCAL_EXAMPLES)
    if mode == GenerationMode.POSITIVE:
        assert any(s < 300 for s in statuses), f"never past validation: {sorted(set(statuses))}"
