"""POST /v1/chat/completions."""

from __future__ import annotations

import orjson
from aiohttp import web

from keel.api.auth import principal_of
from keel.api.body import read_json
from keel.api.sse import stream_completion
from keel.api.traced import traced
from keel.gateway import Gateway
from keel.pipeline import Context, Trace
from keel.pipeline.context import finish


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await traced(request, "chat.completions", _complete)


async def _complete(request: web.Request, gateway: Gateway, trace: Trace) -> web.StreamResponse:
    body = await read_json(request, gateway.config.server.max_body_bytes)
    if gateway.config.tracing.record_bodies and isinstance(body, dict):
        trace.request = dict(body)  # the client's request, before layers change it
    if isinstance(body, dict) and isinstance(body.get("user"), str):
        trace.user = body["user"]
    ctx = gateway.context_for(body, trace, request.headers)
    ctx.response_headers.update(
        await gateway.admit(principal_of(request), trace, ctx.route.name, ctx.route.limits))
    if ctx.stream:
        return await stream_completion(request, ctx, _headers(ctx))
    result = await ctx.route.handler(ctx)
    await finish(ctx)
    trace.response = result
    trace.record_usage(result.get("usage"))
    trace.system_fingerprint = result.get("system_fingerprint")
    headers = _headers(ctx)
    if ctx.route.pricing is not None:
        trace.cost_usd = ctx.route.pricing.cost(trace.prompt_tokens, trace.completion_tokens)
        headers["x-keel-cost-usd"] = f"{trace.cost_usd:.8f}"
    return web.Response(body=orjson.dumps(result), content_type="application/json",
                        headers=headers)


def _headers(ctx: Context) -> dict[str, str]:
    return {
        "x-keel-trace-id": ctx.trace.id,
        "x-keel-provider": ctx.route.provider_name,
        "x-keel-model": ctx.route.upstream_model,
        **ctx.response_headers,
    }
