"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from keel.api.body import read_json
from keel.api.errors import error_response
from keel.api.keys import GATEWAY
from keel.api.sse import stream_completion
from keel.errors import KeelError
from keel.pipeline import Context, Trace

log = logging.getLogger("keel.api")

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    trace = Trace()
    status = 200
    try:
        body = await read_json(request, gateway.config.server.max_body_bytes)
        if gateway.config.tracing.record_bodies and isinstance(body, dict):
            trace.request = dict(body)  # the client's request, before layers change it
        ctx = gateway.context_for(body, trace, request.headers)
        if ctx.stream:
            return await stream_completion(request, ctx, _headers(ctx))
        result = await ctx.route.handler(ctx)
        trace.response = result
        trace.record_usage(result.get("usage"))
        trace.system_fingerprint = result.get("system_fingerprint")
        return web.Response(
            body=orjson.dumps(result), content_type="application/json", headers=_headers(ctx)
        )
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
        trace.finish(trace.status or status)
        gateway.record(trace)


def _headers(ctx: Context) -> dict[str, str]:
    return {
        "x-keel-trace-id": ctx.trace.id,
        "x-keel-provider": ctx.route.provider_name,
        "x-keel-model": ctx.route.upstream_model,
        **ctx.response_headers,
    }
