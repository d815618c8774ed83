"""Feedback on an answer, over HTTP.

    POST /v1/feedback                 {trace_id, score, scale?, comment?, correction?,
                                       metadata?} -> 201
    GET  /v1/feedback?trace_id=ID     {"object": "list", "data": [feedback, ...]}

The trace id is the `x-keel-trace-id` header of the answer. Errors are OpenAI-shaped: an unknown
trace is a 404 with code `trace_not_found`; a bad field a 400 naming it (`param`).
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.body import read_json, reject_nul
from keel.api.errors import error_response
from keel.errors import InvalidRequest, KeelError
from keel.ops import feedback as ops

FIELDS = {"trace_id", "score", "scale", "comment", "correction", "metadata"}
FLUSH_WAIT_S = 1.0


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/feedback", create_feedback)
    app.router.add_get("/v1/feedback", list_feedback)


async def create_feedback(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        body = await read_json(request, gateway.config.server.max_body_bytes)
        reject_nul(body)
        fields = _validated(body)
        store = gateway.runtime.store
        await _require_trace(gateway, store, fields["trace_id"])
        stored = await asyncio.to_thread(ops.add_feedback, store, **fields)
    except KeelError as exc:
        return error_response(exc)
    return _json(stored, status=201)


async def list_feedback(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    trace_id = request.query.get("trace_id")
    if not trace_id:
        return error_response(InvalidRequest("trace_id: required query parameter",
                                             param="trace_id"))
    try:
        reject_nul(trace_id, "trace_id")
    except KeelError as exc:
        return error_response(exc)
    rows = await asyncio.to_thread(ops.feedback_for, gateway.runtime.store, trace_id)
    return _json({"object": "list", "data": rows})


def _validated(body) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}",
                             param=unknown[0])
    if "trace_id" not in body:
        raise InvalidRequest("trace_id: required", param="trace_id")
    if not isinstance(body["trace_id"], str) or not body["trace_id"]:
        raise InvalidRequest("trace_id: expected a string", param="trace_id")
    if "score" not in body:
        raise InvalidRequest("score: required", param="score")
    ops.check_score(body["score"], body.get("scale"))
    for name in ("comment", "correction"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"{name}: expected a string", param=name)
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise InvalidRequest("metadata: expected an object", param="metadata")
    return {name: body.get(name) for name in FIELDS}


async def _require_trace(gateway, store, trace_id: str) -> None:
    if await asyncio.to_thread(ops.trace_exists, store, trace_id):
        return
    # Feedback can arrive right after its answer, while the trace still waits in the writer's
    # buffer (written every ~0.25 s): flush it before saying the trace does not exist.
    recorder = getattr(gateway, "recorder", None)
    if recorder is not None:
        await asyncio.to_thread(recorder.flush, FLUSH_WAIT_S)
    await asyncio.to_thread(ops.require_trace, store, trace_id)


def _json(value, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")
