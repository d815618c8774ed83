"""GET /v1/models, GET /v1/models/{id}, and the health probes."""

from __future__ import annotations

from aiohttp import web

from keel.api.errors import error_response
from keel.api.keys import GATEWAY
from keel.errors import KeelError
from keel.pipeline import Route


def _model(route: Route) -> dict:
    return {"id": route.name, "object": "model", "created": route.created, "owned_by": route.owned_by}


async def list_models(request: web.Request) -> web.Response:
    routes = request.app[GATEWAY].routes.values()
    return web.json_response({"object": "list", "data": [_model(r) for r in routes]})


async def get_model(request: web.Request) -> web.Response:
    try:
        route = request.app[GATEWAY].route(request.match_info["model_id"])
    except KeelError as exc:
        return error_response(exc)
    return web.json_response(_model(route))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    recorder = gateway.recorder
    body = {
        "status": "ready" if gateway.ready else "starting",
        "traces": recorder.stats() if recorder is not None else None,
    }
    return web.json_response(body, status=200 if gateway.ready else 503)
