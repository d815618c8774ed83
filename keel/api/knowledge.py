"""The knowledge store over HTTP.

    POST   /v1/knowledge/{collection}/search           {query, top_k?, filters?, mode?}
    POST   /v1/knowledge/{collection}/documents        {documents: [{id?, text, metadata?,
                                                                      source?, title?}]}
    DELETE /v1/knowledge/{collection}/documents/{id}
    GET    /v1/knowledge                                the collections

Errors are OpenAI-shaped: an unknown collection is a 404 with code `collection_not_found`, a
bad body a 400 naming the field.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.body import read_json, reject_nul
from keel.api.errors import error_response
from keel.errors import InvalidRequest, KeelError, NotFound
from keel.grounding.knowledge import knowledge_base

_SEARCH_FIELDS = {"query", "top_k", "filters", "mode"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/knowledge", list_collections)
    app.router.add_post("/v1/knowledge/{collection}/search", search)
    app.router.add_post("/v1/knowledge/{collection}/documents", add_documents)
    app.router.add_delete("/v1/knowledge/{collection}/documents/{doc_id:.+}", delete_document)


def _handled(handler):
    async def wrapper(request: web.Request) -> web.Response:
        try:
            return _json(await handler(request))
        except KeelError as exc:
            return error_response(exc)

    wrapper.__name__ = handler.__name__
    return wrapper


@_handled
async def list_collections(request: web.Request) -> dict:
    rows = await _kb(request).collections()
    return {"object": "list", "data": [{"object": "knowledge.collection", **r} for r in rows]}


@_handled
async def search(request: web.Request) -> dict:
    collection = request.match_info["collection"]
    body = await _body(request)
    unknown = set(body) - _SEARCH_FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    kb = _kb(request)
    hits = await kb.search(
        collection, body.get("query"), top_k=body.get("top_k", 4),
        filters=body.get("filters"), mode=body.get("mode", "hybrid"),
    )
    return {
        "object": "list",
        "data": [{"object": "knowledge.hit", **hit.to_dict()} for hit in hits],
        "collection": collection,
        "version": await kb.version(collection),
    }


@_handled
async def add_documents(request: web.Request) -> dict:
    collection = request.match_info["collection"]
    body = await _body(request)
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise InvalidRequest("documents: expected a non-empty list of documents",
                             param="documents")
    kb = _kb(request)
    ids = await kb.add_documents(collection, documents)
    return {"object": "list", "data": ids, "collection": collection,
            "version": await kb.version(collection)}


@_handled
async def delete_document(request: web.Request) -> dict:
    collection, doc_id = request.match_info["collection"], request.match_info["doc_id"]
    reject_nul(dict(request.match_info))
    kb = _kb(request)
    if not await kb.remove_documents(collection, [doc_id]):
        raise NotFound(f"no document {doc_id!r} in collection {collection!r}",
                       code="document_not_found")
    return {"id": doc_id, "object": "knowledge.document.deleted", "deleted": True,
            "collection": collection, "version": await kb.version(collection)}


async def _body(request: web.Request) -> dict:
    reject_nul(dict(request.match_info))  # the collection name and document id are stored too
    body = await read_json(request, request.app[GATEWAY].config.server.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object as the request body")
    reject_nul(body)
    return body


def _kb(request: web.Request):
    return knowledge_base(request.app[GATEWAY].runtime)


def _json(value) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")
