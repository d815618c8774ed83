"""The knowledge routes over a real loopback socket, with OpenAI-shaped errors."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig, StoreConfig
from keel.gateway import Gateway
from tests.grounding.knowledge.conftest import fake_factory


@pytest.fixture
async def client(db_url):
    gateway = Gateway(KeelConfig(store=StoreConfig(url=db_url)))
    gateway.runtime._embedder_factory = fake_factory
    app = create_app(gateway)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    async with ClientSession(base_url=base) as session:
        yield session
    await server.close()


async def add(client, documents):
    async with client.post("/v1/knowledge/help/documents", json={"documents": documents}) as r:
        return r.status, await r.json()


async def test_add_search_delete_and_list(client):
    status, body = await add(client, [
        {"id": "delete", "text": "Delete your account in Settings.", "metadata": {"lang": "en"}},
        {"id": "refund", "text": "Refunds take five days.", "source": "faq/refunds.md"},
    ])
    assert status == 200 and body["data"] == ["delete", "refund"]
    version = body["version"]

    async with client.post("/v1/knowledge/help/search",
                           json={"query": "delete my account", "top_k": 1}) as r:
        result = await r.json()
    assert r.status == 200 and result["object"] == "list"
    assert result["collection"] == "help" and result["version"] == version
    (hit,) = result["data"]
    assert hit["document_id"] == "delete" and hit["chunk_id"] == "delete#0"
    assert set(hit["scores"]) == {"fulltext", "vector"} and hit["metadata"] == {"lang": "en"}

    async with client.post("/v1/knowledge/help/search",
                           json={"query": "refunds", "mode": "fulltext",
                                 "filters": {"lang": "en"}}) as r:
        assert (await r.json())["data"] == []

    async with client.get("/v1/knowledge") as r:
        listing = await r.json()
    assert [(c["name"], c["documents"]) for c in listing["data"]] == [("help", 2)]

    async with client.delete("/v1/knowledge/help/documents/refund") as r:
        deleted = await r.json()
    assert r.status == 200 and deleted["deleted"] and deleted["version"] != version
    async with client.delete("/v1/knowledge/help/documents/refund") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "document_not_found"


async def test_unknown_collection_is_a_404(client):
    async with client.post("/v1/knowledge/nope/search", json={"query": "x"}) as r:
        error = (await r.json())["error"]
    assert r.status == 404
    assert error["code"] == "collection_not_found" and error["type"] == "invalid_request_error"
    async with client.delete("/v1/knowledge/nope/documents/x") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "collection_not_found"


@pytest.mark.parametrize("body, param", [
    ({}, "query"),
    ({"query": 3}, "query"),
    ({"query": "x", "top_k": "5"}, "top_k"),
    ({"query": "x", "mode": "semantic"}, "mode"),
    ({"query": "x", "filters": {"k": {"nested": 1}}}, "filters"),
    ({"query": "x", "topk": 5}, "topk"),
])
async def test_bad_search_bodies_name_the_field(client, body, param):
    await add(client, [{"text": "something"}])
    async with client.post("/v1/knowledge/help/search", json=body) as r:
        error = (await r.json())["error"]
    assert r.status == 400 and error["param"] == param


@pytest.mark.parametrize("documents", [None, [], ["text"], [{"text": ""}], [{"txt": "x"}],
                                       [{"text": "x", "metadata": []}]])
async def test_bad_documents_are_a_400(client, documents):
    status, body = await add(client, documents)
    assert status == 400 and body["error"]["param"] == "documents"


async def test_body_that_is_not_json(client):
    async with client.post("/v1/knowledge/help/search", data=b"{nope") as r:
        assert r.status == 400


async def test_concurrent_posts_to_a_new_collection_all_succeed(client):
    async def post(i):
        async with client.post("/v1/knowledge/fresh/documents", json={"documents": [
            {"id": "same", "text": f"The same document, take {i}."},
            {"id": f"doc{i}", "text": f"Document number {i}."},
        ]}) as r:
            return r.status, await r.json()

    answers = await asyncio.gather(*(post(i) for i in range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    async with client.get("/v1/knowledge") as r:
        (row,) = (await r.json())["data"]
    assert (row["name"], row["documents"], row["chunks"]) == ("fresh", 9, 9)


async def test_a_nul_character_is_a_400_naming_where_on_every_backend(client):
    # PostgreSQL's text cannot hold NUL (the fuzzer found the 500 it gave); SQLite answers alike.
    status, body = await add(client, [{"text": "ok"}, {"text": "a\u0000b"}])
    assert status == 400 and body["error"]["param"] == "documents[1].text"
    assert "NUL" in body["error"]["message"]
    await add(client, [{"text": "something"}])
    async with client.post("/v1/knowledge/help/search", json={"query": "x\u0000"}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "query"
    async with client.post("/v1/knowledge/a%00b/documents", json={"documents": [{"text": "x"}]}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "collection"
    async with client.get("/v1/feedback", params={"trace_id": "t\u0000"}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "trace_id"
    async with client.post("/v1/feedback", json={"trace_id": "t", "score": 1,
                                                 "comment": "bad\u0000"}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "comment"
