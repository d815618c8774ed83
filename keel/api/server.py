"""Run the HTTP server until SIGINT or SIGTERM, then close cleanly (traces flushed)."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from aiohttp import web

from keel.api.app import create_app
from keel.config import KeelConfig
from keel.gateway import Gateway


def run(config: KeelConfig, announce: Callable[[str], None] = print) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(serve(config, announce))
    else:
        uvloop.run(serve(config, announce))


async def serve(config: KeelConfig, announce: Callable[[str], None] = print) -> None:
    gateway = Gateway(config)
    app = create_app(gateway)
    # handler_cancellation: a client that disconnects cancels its handler, which stops its
    # generation on the embedded engine instead of computing an answer nobody reads.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else config.server.port
    models = ", ".join(f"{r.name} ({r.provider_name})" for r in gateway.routes.values())
    announce(f"Keel listening on http://{config.server.host}:{port}/v1")
    announce(f"models: {models or 'none'}")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
