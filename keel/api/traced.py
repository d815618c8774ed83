"""Run a handler's work under a trace: every outcome (answer, error, client gone) recorded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.errors import error_response
from keel.errors import ClientClosed, InternalError, KeelError
from keel.gateway import Gateway
from keel.pipeline import Trace

Work = Callable[[web.Request, Gateway, Trace], Awaitable[web.StreamResponse]]


async def traced(request: web.Request, endpoint: str, work: Work) -> web.StreamResponse:
    """`work`'s response, or its error as an OpenAI-shaped response; `Gateway.recording`
    records the trace either way (a cancelled request, the client gone, propagates)."""
    gateway = request.app[GATEWAY]
    trace = Trace(endpoint=endpoint)
    headers = request.headers
    trace.session_id = headers.get("x-keel-session-id")
    trace.traceparent = headers.get("traceparent")
    try:
        with gateway.recording(trace):
            response = await work(request, gateway, trace)
            if not response.prepared and _client_gone(request):
                # aiohttp (handler cancellation off) lets the handler finish for a client that
                # has gone; the answer has nowhere to go, so the trace says so.
                trace.status = ClientClosed.status
                trace.error = ClientClosed().to_openai()["error"]
            return response
    except KeelError as exc:
        return error_response(exc, {"x-keel-trace-id": trace.id})
    except Exception:  # logged by `recording`, with its stack; the client gets the trace id
        return error_response(InternalError.for_trace(trace.id), {"x-keel-trace-id": trace.id})


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
