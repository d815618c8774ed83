"""GET /v1/models, GET /v1/models/{id}, and the health probes."""

from __future__ import annotations

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.embeddings import embedding_models
from keel.api.errors import error_response
from keel.errors import KeelError
from keel.pipeline import Route


def _model(route: Route) -> dict:
    return {"id": route.name, "object": "model", "created": route.created, "owned_by": route.owned_by}


def _all_models(gateway) -> list[dict]:
    """Chat models, then embedders (usable on /v1/embeddings), as OpenAI lists both."""
    return [_model(r) for r in gateway.routes.values()] + embedding_models(gateway)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _all_models(request.app[GATEWAY])})


async def get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    model_id = request.match_info["model_id"]
    for model in _all_models(gateway):
        if model["id"] == model_id:
            return web.json_response(model)
    try:
        gateway.route(model_id)  # raises the OpenAI-shaped 404
    except KeelError as exc:
        return error_response(exc)
    raise AssertionError("unreachable: the model was not in the list")


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
    }
    return web.json_response(body, status=200 if gateway.ready else 503)
