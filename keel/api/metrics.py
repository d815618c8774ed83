"""GET /metrics: the Prometheus exposition of `keel.ops.metrics` (see docs/metrics.md).

Which keys may scrape is the auth middleware's business (the `metrics` surface); this handler
only answers 404 when `metrics.enabled` is false.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.errors import NotFound


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)


async def get_metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if not gateway.config.metrics.enabled:
        raise NotFound("Metrics are disabled (metrics.enabled is false in keel.yaml).")
    metrics = gateway.runtime.metrics
    accept = request.headers.get("Accept")
    if metrics.multiprocess:  # reads every worker's files: off the event loop
        body, content_type = await asyncio.to_thread(metrics.render, accept)
    else:
        body, content_type = metrics.render(accept)
    return web.Response(body=body, headers={"Content-Type": content_type})
