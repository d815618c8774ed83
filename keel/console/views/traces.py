"""Console pages: traces (placeholder until its views land)."""

from __future__ import annotations

from aiohttp import web

from keel.console.render import render


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/traces", trace_list, name="console-traces")


async def trace_list(request: web.Request) -> web.Response:
    return render(request, "traces.html", title="Traces")
