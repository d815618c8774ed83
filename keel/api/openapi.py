"""GET /openapi.json: an OpenAPI 3.1 description of every route Keel serves.

The request bodies of chat completions and embeddings are generated from the msgspec types that
validate them at the edge (keel.pipeline.request, keel.embeddings.request), so the document
cannot drift from what Keel accepts. The other schemas mirror the handlers, and the response
shapes follow the official OpenAI description, kept to the fields Keel sends. Every error is
documented with the OpenAI error object. tests/fuzz runs schemathesis against this document.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec
import orjson
from aiohttp import web

from keel import __version__
from keel.embeddings.request import EmbeddingRequest
from keel.grounding.knowledge.knowledge import MAX_TOP_K, MODES
from keel.ops.keys import MAX_PER_MINUTE, PERIODS
from keel.ops.principal import DEFAULT_SURFACES, SURFACES
from keel.pipeline.request import ChatCompletionRequest

_REF = "#/components/schemas/{name}"


def ref(name: str) -> dict:
    return {"$ref": _REF.format(name=name)}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


@lru_cache(maxsize=1)
def _document_bytes() -> bytes:
    return orjson.dumps(document())


def document() -> dict:
    """The whole OpenAPI document (a fresh dict: callers may change it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keel",
            "version": __version__,
            "description": "An OpenAI-compatible gateway. Errors are always "
                           '{"error": {"message", "type", "param", "code"}}.',
        },
        "paths": _secured(_paths()),
        "components": {"schemas": _schemas(), "securitySchemes": _SECURITY_SCHEMES},
        # Every route but the probes and this document, once auth is on (docs/auth.md).
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
    }


_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer",
                   "description": "Authorization: Bearer KEEL_ADMIN_KEY or a virtual key"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "api-key",
                     "description": "The same key, as Azure OpenAI clients send it"},
}
_PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json")


def _secured(paths: dict) -> dict:
    """The public paths opt out of the document's security; the others may answer 401 and 403."""
    for path, operations in paths.items():
        for operation in operations.values():
            if path in _PUBLIC_PATHS:
                operation["security"] = []
            else:
                operation["responses"].setdefault("401", {
                    "description": "No API key, or one Keel does not accept (invalid_api_key)",
                    "content": _json(ref("Error"))})
                operation["responses"].setdefault("403", {
                    "description": "The key may not use this route or model",
                    "content": _json(ref("Error"))})
    return paths


# -- paths --------------------------------------------------------------------------------------

def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ok(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": _json(schema)}


_ERROR_WHEN = {
    "400": "Invalid request (param names the field) or a parameter the route cannot honour",
    "4XX": "A remote upstream refused the request: its status, message, param and code",
    "404": "Unknown model, collection, document or trace",
    "409": "The collection was built with another embedder",
    "413": "Body larger than server.max_body_bytes",
    "429": "The upstream is rate limiting (its Retry-After is passed on)",
    "502": "The upstream failed or answered something unusable",
    "503": "Not ready yet",
    "504": "The upstream did not answer in time",
}


def _errors(*statuses: str) -> dict:
    return {s: {"description": _ERROR_WHEN[s], "content": _json(ref("Error"))} for s in statuses}


def _body(schema: dict) -> dict:
    return {"required": True, "content": _json(schema)}


def _path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


_COLLECTION = _path_param("collection", "The knowledge collection's name")
_KEY_ID = _path_param("key_id", "The key's id (key_…), never its secret")


def _paths() -> dict:
    return {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion",
            "summary": "Chat Completions, through the model's pipeline",
            "requestBody": _body(ref("ChatCompletionRequest")),
            "responses": {
                "200": {
                    "description": "The completion; Server-Sent Events when stream is true",
                    "content": {
                        "application/json": {"schema": ref("ChatCompletion")},
                        "text/event-stream": {"schema": ref("ChatCompletionEvent")},
                    },
                },
                **_errors("400", "404", "413", "429", "4XX", "502", "504"),
            },
        }},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "responses": {"200": _ok(ref("ModelList"))},
        }},
        "/v1/models/{model_id}": {"get": {
            "operationId": "retrieveModel",
            "parameters": [_path_param("model_id", "A model id (may contain '/')")],
            "responses": {"200": _ok(ref("Model")), **_errors("404")},
        }},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding",
            "requestBody": _body(ref("EmbeddingRequest")),
            "responses": {"200": _ok(ref("EmbeddingList")),
                          **_errors("400", "404", "413", "429", "4XX", "502", "504")},
        }},
        "/v1/moderations": {"post": {
            "operationId": "createModeration",
            "requestBody": _body(ref("ModerationRequest")),
            "responses": {"200": _ok(ref("ModerationList")),
                          **_errors("400", "404", "413", "429", "503")},
        }},
        "/v1/knowledge": {"get": {
            "operationId": "listKnowledgeCollections",
            "responses": {"200": _ok(_list_of({"type": "object", "required": ["object"],
                                               "properties": {"object": {
                                                   "const": "knowledge.collection"}}}))},
        }},
        "/v1/knowledge/{collection}/search": {"post": {
            "operationId": "searchKnowledge",
            "parameters": [_COLLECTION],
            "requestBody": _body(ref("KnowledgeSearchRequest")),
            "responses": {"200": _ok(ref("KnowledgeSearchResult")),
                          **_errors("400", "404", "413", "429", "502", "504")},
        }},
        "/v1/knowledge/{collection}/documents": {"post": {
            "operationId": "addKnowledgeDocuments",
            "summary": "Add or replace documents (a new collection is created)",
            "parameters": [_COLLECTION],
            "requestBody": _body(ref("KnowledgeDocuments")),
            "responses": {"200": _ok(ref("KnowledgeDocumentIds")),
                          **_errors("400", "409", "413", "429", "502", "504")},
        }},
        "/v1/knowledge/{collection}/documents/{doc_id}": {"delete": {
            "operationId": "deleteKnowledgeDocument",
            "parameters": [_COLLECTION, _path_param("doc_id", "The document's id")],
            "responses": {"200": _ok(ref("KnowledgeDocumentDeleted")), **_errors("404")},
        }},
        "/v1/feedback": {
            "post": {
                "operationId": "createFeedback",
                "requestBody": _body(ref("FeedbackRequest")),
                "responses": {"201": _ok(ref("Feedback"), "Stored"),
                              **_errors("400", "404", "413")},
            },
            "get": {
                "operationId": "listFeedback",
                "parameters": [{"name": "trace_id", "in": "query", "required": True,
                                "schema": {"type": "string", "minLength": 1}}],
                "responses": {"200": _ok(_list_of(ref("Feedback"))), **_errors("400")},
            },
        },
        # Virtual keys (docs/keys.md): the admin surface once auth is on.
        "/v1/keys": {
            "post": {
                "operationId": "createKey",
                "summary": "A new virtual key; its secret is in this answer only",
                "requestBody": _body(ref("KeyRequest")),
                "responses": {"201": _ok(ref("KeyWithSecret"), "Created"),
                              **_errors("400", "413")},
            },
            "get": {
                "operationId": "listKeys",
                "summary": "Every key, revoked and expired ones included, without secrets",
                "responses": {"200": _ok(_list_of(ref("Key")))},
            },
        },
        "/v1/keys/{key_id}": {
            "get": {
                "operationId": "retrieveKey",
                "parameters": [_KEY_ID],
                "responses": {"200": _ok(ref("Key")), **_errors("404")},
            },
            "delete": {
                "operationId": "revokeKey",
                "summary": "Revoke the key (it stays listed, status revoked)",
                "parameters": [_KEY_ID],
                "responses": {"200": _ok(ref("Key")), **_errors("404")},
            },
        },
        "/v1/keys/{key_id}/rotate": {"post": {
            "operationId": "rotateKey",
            "summary": "A new secret for the key; the old one stops working",
            "parameters": [_KEY_ID],
            "responses": {"200": _ok(ref("KeyWithSecret")), **_errors("400", "404")},
        }},
        "/healthz": {"get": {
            "operationId": "healthz",
            "responses": {"200": _ok({"type": "object", "required": ["status"],
                                      "properties": {"status": {"const": "ok"}}})},
        }},
        "/readyz": {"get": {
            "operationId": "readyz",
            "responses": {
                "200": _ok(ref("Readiness"), "Ready"),
                "503": {"description": "Still starting", "content": _json(ref("Readiness"))},
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (docs/metrics.md)",
            "responses": {
                "200": {"description": "The Prometheus text format (OpenMetrics on request)",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "404": {"description": "metrics.enabled is false",
                        "content": _json(ref("Error"))},
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _ok({"type": "object", "required": ["openapi", "paths"]})},
        }},
    }


def _list_of(item: dict, **extra: dict) -> dict:
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": item},
                       **extra},
    }


# -- schemas ------------------------------------------------------------------------------------

def _schemas() -> dict:
    _, generated = msgspec.json.schema_components(
        [ChatCompletionRequest, EmbeddingRequest], ref_template=_REF)
    return {**generated, **_RESPONSES}


_NULLABLE_STR = {"type": ["string", "null"]}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {k: {"type": "integer", "minimum": 0}
                   for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
}
_TOOL_CALL = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name", "arguments"],
                     "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}},
    },
}
_KEY = {
    "type": "object",
    "required": ["id", "object", "name", "hint", "status", "surfaces", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "api_key"},
        "name": {"type": "string"},
        "hint": {"type": "string", "description": "the secret's last four characters"},
        "status": {"enum": ["active", "revoked", "expired"]},
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "surfaces": {"type": "array", "items": {"enum": list(SURFACES)}},
        "rpm": {"type": ["integer", "null"]},
        "tpm": {"type": ["integer", "null"]},
        "budget_usd": {"type": ["number", "null"]},
        "period": {"enum": [*PERIODS, None]},
        "metadata": {"type": "object"},
        "created_at": {"type": "number"},
        "expires_at": {"type": ["number", "null"]},
        "revoked_at": {"type": ["number", "null"]},
    },
}
_FINISH_REASONS = ["stop", "length", "tool_calls", "content_filter", "function_call"]

_RESPONSES: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": _NULLABLE_STR, "code": _NULLABLE_STR},
        }},
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": _NULLABLE_STR,
            "usage": _USAGE,
            "choices": {"type": "array", "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "finish_reason": {"enum": _FINISH_REASONS},
                    "logprobs": {"type": ["object", "null"]},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": _NULLABLE_STR,
                            "refusal": _NULLABLE_STR,
                            "tool_calls": {"type": "array", "items": _TOOL_CALL},
                        },
                    },
                },
            }},
        },
    },
    # One Server-Sent Event of a stream (OpenAPI 3.1: the schema of a text/event-stream
    # describes each event): `data` is a chat.completion.chunk, an error object after a failure
    # once the stream has begun, or the closing `[DONE]`.
    "ChatCompletionEvent": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "contentMediaType": "application/json"},
                       "event": {"type": "string"}},
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}},
    },
    "ModelList": _list_of(ref("Model")),
    "ModerationRequest": {
        "type": "object", "required": ["input"],
        "properties": {"input": {"anyOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "maxItems": 2048, "items": {"anyOf": [
                {"type": "string"},
                {"type": "object", "required": ["type", "text"],
                 "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}]}}]},
            "model": {"enum": ["keel-moderation", "omni-moderation-latest",
                               "omni-moderation-2024-09-26", "text-moderation-latest",
                               "text-moderation-stable"]}},
    },
    "ModerationList": {
        "type": "object", "required": ["id", "model", "results"],
        "properties": {"id": {"type": "string"}, "model": {"type": "string"},
                       "results": {"type": "array", "items": {
                           "type": "object",
                           "required": ["flagged", "categories", "category_scores",
                                        "category_applied_input_types"],
                           "properties": {
                               "flagged": {"type": "boolean"},
                               "categories": {"type": "object",
                                              "additionalProperties": {"type": "boolean"}},
                               "category_scores": {"type": "object",
                                                   "additionalProperties": {"type": "number"}},
                               "category_applied_input_types": {"type": "object"}}}}},
    },
    "EmbeddingList": _list_of(
        {"type": "object", "required": ["object", "index", "embedding"],
         "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                        "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                                {"type": "string"}]}}},
        model={"type": "string"}, usage=_USAGE,
    ),
    "KnowledgeSearchRequest": {
        "type": "object",
        "required": ["query"],
        "additionalProperties": False,
        "properties": {
            "query": {"type": "string", "minLength": 1},
            "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
            "filters": {"type": "object",
                        "description": "metadata key -> value (see docs/knowledge.md)"},
            "mode": {"enum": list(MODES)},
        },
    },
    "KnowledgeSearchResult": _list_of(
        {"type": "object",
         "required": ["object", "chunk_id", "document_id", "text", "score"],
         "properties": {"object": {"const": "knowledge.hit"}, "chunk_id": {"type": "string"},
                        "document_id": {"type": "string"}, "text": {"type": "string"},
                        "score": {"type": "number"}, "metadata": {"type": "object"}}},
        collection={"type": "string"}, version={"type": "string"},
    ),
    "KnowledgeDocuments": {
        "type": "object",
        "required": ["documents"],
        "properties": {"documents": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": ["string", "integer"]},
                "text": {"type": "string", "minLength": 1},
                "metadata": {"type": ["object", "null"]},
                "source": {"type": ["string", "integer", "null"]},
                "title": {"type": ["string", "integer", "null"]},
            },
        }}},
    },
    "KnowledgeDocumentIds": _list_of({"type": "string"}, collection={"type": "string"},
                                     version={"type": "string"}),
    "KnowledgeDocumentDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "knowledge.document.deleted"},
                       "deleted": {"const": True}, "collection": {"type": "string"},
                       "version": {"type": "string"}},
    },
    "FeedbackRequest": {
        "type": "object",
        "required": ["trace_id", "score"],
        "additionalProperties": False,
        "properties": {
            "trace_id": {"type": "string", "minLength": 1,
                         "description": "the x-keel-trace-id header of the answer"},
            "score": {"type": "integer", "minimum": -1, "maximum": 5,
                      "description": "+1/-1 (thumbs) or 1-5 (rating)"},
            "scale": {"enum": ["thumbs", "rating", None]},
            "comment": _NULLABLE_STR,
            "correction": _NULLABLE_STR,
            "metadata": {"type": ["object", "null"]},
        },
    },
    "Feedback": {"type": "object", "required": ["trace_id", "score"],
                 "properties": {"trace_id": {"type": "string"}, "score": {"type": "integer"}}},
    "KeyRequest": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"},
            "models": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1},
                       "description": "public model names; null: every model"},
            "surfaces": {"type": ["array", "null"], "minItems": 1,
                         "items": {"enum": list(SURFACES)},
                         "description": f"default: {', '.join(DEFAULT_SURFACES)}"},
            "rpm": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_PER_MINUTE},
            "tpm": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_PER_MINUTE},
            "budget_usd": {"type": ["number", "null"], "exclusiveMinimum": 0,
                           "description": "spend allowed per period"},
            "period": {"enum": [*PERIODS, None],
                       "description": "the budget's period (default month); only with budget_usd"},
            "expires": {"type": ["string", "null"],
                        "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[smhdwSMHDW]\s*$",
                        "description": "a duration: 90m, 12h, 30d, 2w"},
            "metadata": {"type": ["object", "null"],
                         "description": "recorded on each trace; team also shares its budget"},
        },
    },
    "Key": _KEY,
    "KeyWithSecret": {
        **_KEY,
        "required": [*_KEY["required"], "secret"],
        "properties": {**_KEY["properties"], "secret": {
            "type": "string", "description": "shown once: store it now"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "traces"],
        "properties": {"status": {"enum": ["ready", "starting"]},
                       "traces": {"type": ["object", "null"]},
                       "store": {"type": ["object", "null"], "description": "the trace "
                                 "writer's view of the database: store_reachable, pending, "
                                 "dropped, last_error"}},
    },
}
