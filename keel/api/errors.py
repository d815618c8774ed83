"""OpenAI-shaped error responses, for Keel's own errors and aiohttp's."""

from __future__ import annotations

import orjson
from aiohttp import web

from keel.errors import KeelError

_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed"}


def error_response(exc: KeelError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=exc.status,
        body=orjson.dumps(exc.to_openai()),
        content_type="application/json",
        headers={**exc.headers, **(headers or {})},
    )


def http_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status in (404, 405):
        message = f"Unknown request URL: {request.method} {request.path}."
    else:
        message = exc.reason
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": _HTTP_CODES.get(exc.status),
        }
    }
    return web.Response(status=exc.status, body=orjson.dumps(body), content_type="application/json")


@web.middleware
async def openai_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_response(request, exc)
