"""GET /v1/models, GET /v1/models/{id}, and the health probes."""

from __future__ import annotations

import os

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import principal_of
from keel.api.embeddings import embedding_models
from keel.api.errors import error_response
from keel.errors import ModelNotFound
from keel.pipeline import Route


def _model(route: Route) -> dict:
    return {"id": route.name, "object": "model", "created": route.created, "owned_by": route.owned_by}


def _all_models(gateway) -> list[dict]:
    """Chat models, then embedders (usable on /v1/embeddings), as OpenAI lists both."""
    return [_model(r) for r in gateway.routes.values()] + embedding_models(gateway)


def _visible_models(request: web.Request) -> list[dict]:
    """The models the request's key may call (a key scoped to some models sees only those)."""
    principal = principal_of(request)
    return [m for m in _all_models(request.app[GATEWAY]) if principal.may_call(m["id"])]


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _visible_models(request)})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    for model in _visible_models(request):  # another key's model is unknown to this one
        if model["id"] == model_id:
            return web.json_response(model)
    return error_response(ModelNotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model"))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    recorder = gateway.recorder
    body = {
        "status": "ready" if gateway.ready else "starting",
        "traces": recorder.stats() if recorder is not None else None,
        # Traces wait in a buffer while the store is away: ready still, but it shows here.
        "store": recorder.status() if recorder is not None else None,
        "pid": os.getpid(),  # which of `keel serve --workers N`'s processes answered
    }
    return web.json_response(body, status=200 if gateway.ready else 503)
