"""Run a handler's work under a trace: every outcome (answer, error, client gone) recorded."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web

from keel.api.errors import error_response
from keel.api.keys import GATEWAY
from keel.errors import KeelError
from keel.gateway import Gateway
from keel.pipeline import Trace

log = logging.getLogger("keel.api")

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer

Work = Callable[[web.Request, Gateway, Trace], Awaitable[web.StreamResponse]]


async def traced(request: web.Request, endpoint: str, work: Work) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    trace = Trace(endpoint=endpoint)
    status = 200
    try:
        return await work(request, gateway, trace)
    except KeelError as exc:
        status = exc.status
        trace.error = exc.to_openai()["error"]
        return error_response(exc, {"x-keel-trace-id": trace.id})
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        trace.error = {"message": "the client closed the connection", "type": "client_closed"}
        raise
    except Exception:
        log.exception("unexpected error in trace %s", trace.id)
        status = 500
        error = KeelError(f"Keel failed to handle the request; see trace {trace.id} in its log.")
        trace.error = error.to_openai()["error"]
        return error_response(error, {"x-keel-trace-id": trace.id})
    finally:
        # A stream that failed after its headers sets trace.status itself.
        trace.finish(trace.status or status)
        gateway.record(trace)
