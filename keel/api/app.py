"""The aiohttp application: routes, middleware, and the gateway's start and close."""

from __future__ import annotations

from aiohttp import web

from keel.api import embeddings, feedback, keys, knowledge, metrics, moderations, openapi
from keel.api.appkeys import GATEWAY
from keel.api.auth import authenticate
from keel.api.chat import chat_completions
from keel.api.errors import openai_errors
from keel.api.models import get_model, healthz, list_models, readyz
from keel.gateway import Gateway


def create_app(gateway: Gateway) -> web.Application:
    # aiohttp enforces the body limit while reading; keel.api.body turns it into an OpenAI 413.
    # Errors wrap auth, so a refused key is answered in the OpenAI shape too.
    app = web.Application(
        client_max_size=gateway.config.server.max_body_bytes,
        middlewares=[openai_errors, authenticate],
    )
    app[GATEWAY] = gateway
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    embeddings.add_routes(app)
    moderations.add_routes(app)
    knowledge.add_routes(app)
    feedback.add_routes(app)
    keys.add_routes(app)
    metrics.add_routes(app)
    openapi.add_routes(app)
    if gateway.config.console.enabled:
        from keel.console import add_routes as add_console_routes

        add_console_routes(app)

    async def start(app: web.Application) -> None:
        await app[GATEWAY].start()

    async def close(app: web.Application) -> None:
        await app[GATEWAY].close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app
