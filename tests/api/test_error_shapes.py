"""Every route answers every error as `{"error": {...}}`: bad input, aiohttp's own errors
(unknown URL, wrong method, too large), and failures nobody planned for (a broken database)."""

from __future__ import annotations

import logging

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.api.auth import is_console_path
from keel.config import ServerConfig
from keel.gateway import Gateway
from tests.api.conftest import fake_config
from tests.grounding.knowledge.conftest import fake_factory
from tests.openai_schema import assert_valid

LIMIT = 16 * 1024
USER = [{"role": "user", "content": "hello"}]

# (method, route as registered, a path to it, a JSON body it accepts) for every route Keel serves.
SERVED = [
    ("POST", "/v1/chat/completions", "/v1/chat/completions",
     {"model": "fake/echo", "messages": USER}),
    ("GET", "/v1/models", "/v1/models", None),
    ("GET", "/v1/models/{model_id}", "/v1/models/fake/echo", None),
    ("GET", "/healthz", "/healthz", None),
    ("GET", "/readyz", "/readyz", None),
    ("GET", "/openapi.json", "/openapi.json", None),
    ("GET", "/metrics", "/metrics", None),
    ("POST", "/v1/embeddings", "/v1/embeddings", {"model": "fake", "input": "hello"}),
    ("POST", "/v1/moderations", "/v1/moderations", {"input": "hello"}),
    ("GET", "/v1/knowledge", "/v1/knowledge", None),
    ("POST", "/v1/knowledge/{collection}/documents", "/v1/knowledge/help/documents",
     {"documents": [{"id": "a", "text": "hello"}]}),
    ("POST", "/v1/knowledge/{collection}/search", "/v1/knowledge/help/search",
     {"query": "hello"}),
    ("DELETE", "/v1/knowledge/{collection}/documents/{doc_id}",
     "/v1/knowledge/help/documents/a", None),
    ("POST", "/v1/feedback", "/v1/feedback", {"trace_id": "0" * 24, "score": 1}),
    ("GET", "/v1/feedback", "/v1/feedback?trace_id=" + "0" * 24, None),
    ("POST", "/v1/keys", "/v1/keys", {"name": "shapes"}),
    ("GET", "/v1/keys", "/v1/keys", None),
    ("GET", "/v1/keys/{key_id}", "/v1/keys/key_0", None),
    ("DELETE", "/v1/keys/{key_id}", "/v1/keys/key_0", None),
    ("POST", "/v1/keys/{key_id}/rotate", "/v1/keys/key_0/rotate", {}),
]
ROUTES = [(method, path, body) for method, _, path, body in SERVED]
POSTS = [path for method, path, _ in ROUTES if method == "POST"]


@pytest.fixture
async def keel(tmp_path):
    gateway = Gateway(fake_config(tmp_path, server=ServerConfig(max_body_bytes=LIMIT)))
    # knowledge without downloading MiniLM; 384 dimensions, as the moderation classifier reads
    gateway.runtime._embedder_factory = lambda name: fake_factory(name, 384)
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    async with ClientSession(base_url=str(server.make_url(""))) as session:
        yield session, gateway
    await server.close()


async def call(session, method, path, *, json=None, data=None, headers=None):
    async with session.request(method, path, json=json, data=data, headers=headers) as r:
        raw = await r.read()
        return r.status, r.headers, raw


def openai_error(status, headers, raw, want_status) -> dict:
    assert status == want_status, raw
    assert headers["Content-Type"].startswith("application/json"), raw
    import orjson

    payload = orjson.loads(raw)
    assert_valid("ErrorResponse", payload)
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in payload["error"]["message"]
    return payload["error"]


def test_the_table_lists_every_route(tmp_path):
    app = create_app(Gateway(fake_config(tmp_path)))
    # aiohttp adds HEAD to each GET; the console's pages answer HTML (tests/console)
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.method != "HEAD" and not is_console_path(r.resource.canonical)}
    assert registered == {(method, route) for method, route, _, _ in SERVED}


async def test_every_route_is_served(keel):
    """The table above is right: each route answers its sample body without an error."""
    session, _ = keel
    for method, path, body in ROUTES:
        status, _, raw = await call(session, method, path, json=body)
        # the sample trace and key do not exist: feedback on the one and the other's own
        # routes are a 404 by design
        assert status in (200, 201, 404), (method, path, raw)
        if status == 404:
            assert path.startswith(("/v1/feedback", "/v1/keys/")), raw


@pytest.mark.parametrize("path", POSTS)
async def test_malformed_json_is_a_400_on_every_post_route(keel, path):
    session, _ = keel
    status, headers, raw = await call(session, "POST", path, data=b'{"broken": [',
                                      headers={"Content-Type": "application/json"})
    error = openai_error(status, headers, raw, 400)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", POSTS)
async def test_a_body_that_is_not_an_object_is_a_400_on_every_post_route(keel, path):
    session, _ = keel
    status, headers, raw = await call(session, "POST", path, json=[1, 2, 3])
    openai_error(status, headers, raw, 400)


@pytest.mark.parametrize("path", POSTS)
async def test_a_body_over_the_limit_is_a_413_on_every_post_route(keel, path):
    session, _ = keel
    status, headers, raw = await call(session, "POST", path, data=b"x" * (LIMIT + 1),
                                      headers={"Content-Type": "application/json"})
    error = openai_error(status, headers, raw, 413)
    assert error["code"] == "request_too_large"


@pytest.mark.parametrize("path", sorted({p for _, p, _ in ROUTES}))
async def test_a_wrong_method_is_a_405_on_every_route(keel, path):
    session, _ = keel
    status, headers, raw = await call(session, "PUT", path)  # no route takes PUT
    error = openai_error(status, headers, raw, 405)
    assert error["code"] == "method_not_allowed"
    assert headers.get("Allow")  # aiohttp's list of the methods that would work stays


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/nothing", "/v1/knowledge/help"])
async def test_an_unknown_url_is_a_404(keel, path):
    session, _ = keel
    status, headers, raw = await call(session, "GET", path)
    assert openai_error(status, headers, raw, 404)["code"] == "unknown_url"


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/v1/embeddings", {"model": "fake", "input": 5}, "input"),
        ("POST", "/v1/knowledge/help/search", {"query": "x", "colour": "red"}, "colour"),
        ("POST", "/v1/knowledge/help/documents", {"documents": []}, "documents"),
        ("POST", "/v1/feedback", {"trace_id": 5, "score": 1}, "trace_id"),
        ("GET", "/v1/feedback", None, "trace_id"),
    ],
)
async def test_a_bad_field_is_a_400_naming_it(keel, method, path, body, param):
    session, _ = keel
    status, headers, raw = await call(session, method, path, json=body)
    assert openai_error(status, headers, raw, 400)["param"] == param


def break_tables(gateway, *tables: str) -> None:
    """A real failure: the database loses tables the handlers need."""
    with gateway.runtime.store.engine.begin() as conn:
        for table in tables:
            conn.exec_driver_sql(f"DROP TABLE {table}")


KNOWLEDGE_TABLES = ("knowledge_chunks", "knowledge_documents", "knowledge_collections")


@pytest.mark.parametrize(
    ("method", "path", "body", "tables"),
    [
        ("GET", "/v1/knowledge", None, KNOWLEDGE_TABLES),
        ("POST", "/v1/knowledge/help/search", {"query": "hello"}, KNOWLEDGE_TABLES),
        ("POST", "/v1/knowledge/help/documents", {"documents": [{"text": "hi"}]},
         KNOWLEDGE_TABLES),
        ("DELETE", "/v1/knowledge/help/documents/a", None, KNOWLEDGE_TABLES),
        ("POST", "/v1/feedback", {"trace_id": "0" * 24, "score": 1}, ("feedback", "traces")),
        ("GET", "/v1/feedback?trace_id=" + "0" * 24, None, ("feedback",)),
    ],
)
async def test_a_broken_database_is_a_500_in_openai_shape(keel, caplog, method, path, body,
                                                          tables):
    session, gateway = keel
    break_tables(gateway, *tables)
    with caplog.at_level(logging.ERROR):
        status, headers, raw = await call(session, method, path, json=body)
    error = openai_error(status, headers, raw, 500)
    assert error["type"] == "server_error"
    assert "DROP" not in error["message"] and "no such table" not in error["message"]
    logged = [r for r in caplog.records if r.name.startswith("keel") and r.exc_info]
    assert len(logged) == 1  # the details go to the log, once


def _break_models(monkeypatch, gateway):
    monkeypatch.setattr("keel.api.models._all_models", _broken)


def _break_readiness(monkeypatch, gateway):
    monkeypatch.setattr(gateway.recorder, "stats", _broken)


def _broken(*args, **kwargs):
    raise RuntimeError("a bug with a secret in its message")


@pytest.mark.parametrize(
    ("path", "inject"),
    [
        ("/v1/models", _break_models),
        ("/v1/models/fake/echo", _break_models),
        ("/readyz", _break_readiness),
    ],
)
async def test_an_unexpected_exception_is_a_500_in_openai_shape(keel, monkeypatch, caplog, path,
                                                                inject):
    session, gateway = keel
    inject(monkeypatch, gateway)
    with caplog.at_level(logging.ERROR):
        status, headers, raw = await call(session, "GET", path)
    error = openai_error(status, headers, raw, 500)
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert any("secret" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_an_unexpected_exception_in_a_traced_route_names_the_trace(keel, monkeypatch):
    session, gateway = keel

    monkeypatch.setattr(gateway, "context_for", _broken)
    status, headers, raw = await call(session, "POST", "/v1/chat/completions",
                                      json={"model": "fake/echo", "messages": USER})
    error = openai_error(status, headers, raw, 500)
    assert headers["x-keel-trace-id"] in error["message"] and "secret" not in error["message"]
