"""Run the HTTP server until SIGINT or SIGTERM, then close cleanly (traces flushed)."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import Callable

from aiohttp import web

from keel.api.app import create_app
from keel.config import KeelConfig
from keel.gateway import Gateway

# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
SWITCH_INTERVAL_S = 0.001
# Allocations between young-generation collections (CPython's default: 700).
GC_GEN0_THRESHOLD = 10_000


def run(config: KeelConfig, announce: Callable[[str], None] = print,
        reuse_port: bool = False) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(serve(config, announce, reuse_port=reuse_port))
    else:
        uvloop.run(serve(config, announce, reuse_port=reuse_port))


async def serve(
    config: KeelConfig,
    announce: Callable[[str], None] = print,
    extend: Callable[[web.Application, Gateway], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM. `extend(app, gateway)`, if given, adds to the app before
    it starts (bench/soak.py adds a stats route, so it measures this very code). `reuse_port`:
    SO_REUSEPORT, so the workers of `keel serve --workers N` share one port (keel.api.workers)."""
    gateway = Gateway(config)
    app = create_app(gateway)
    if extend is not None:
        extend(app, gateway)
    # handler_cancellation: a client that disconnects cancels its handler, which stops its
    # generation on the embedded engine instead of computing an answer nobody reads.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024,
                       reuse_port=reuse_port or None)
    await site.start()
    settle_runtime()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else config.server.port
    models = ", ".join(f"{r.name} ({r.provider_name})" for r in gateway.routes.values())
    announce(f"Keel listening on http://{config.server.host}:{port}/v1")
    announce(f"models: {models or 'none'}")
    if config.console.enabled:
        announce(f"console: http://{config.server.host}:{port}/console")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def settle_runtime() -> None:
    """Tune the interpreter for serving, once start-up is over; the tail latency depends on it.

    - `gc.freeze()`: what start-up built (modules, schemas, the layer chain: hundreds of
      thousands of objects) moves out of the collector's sight, so a full collection walks only
      what requests allocate: single-digit ms instead of 100 ms and more, every few seconds,
      during which no request moves.
    - A higher young-generation threshold: fewer collections, and fewer in-flight requests'
      objects promoted into the older generations that full collections walk. Requests make
      next to no reference cycles, so memory is freed by reference counting regardless.
    - A 1 ms switch interval: the trace writer thread holds the GIL while it builds a batch,
      and the event loop, wanting it back, waits by default up to 5 ms each time.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
