"""A bare aiohttp pass-through proxy: the reference point the gateway budget is measured against."""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def start(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def close(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.Response:
        async with app[session_key].request(request.method, upstream + request.path,
                                            data=await request.read(),
                                            headers={"Content-Type": "application/json"}) as r:
            return web.Response(status=r.status, body=await r.read(),
                                content_type="application/json")

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    opts = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(opts.upstream), host="127.0.0.1", port=opts.port, print=None,
                access_log=None)
