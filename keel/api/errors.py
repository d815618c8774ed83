"""OpenAI-shaped error responses, for Keel's own errors, aiohttp's, and unexpected ones.

The `openai_errors` middleware is the last line: whatever a handler raises leaves as
`{"error": {"message", "type", "param", "code"}}` with its status. A `KeelError` keeps its own;
an aiohttp `HTTPException` (404 unknown URL, 405, 413, ...) keeps its status; anything else is
logged with its stack and answered 500 `server_error`, the stack never in the body. Handlers
under `keel.api.traced` answer their errors themselves, with the trace id.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from keel.errors import InternalError, KeelError

log = logging.getLogger("keel.api")

_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}


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
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if exc.status < 500 else "server_error",
            "param": None,
            "code": _HTTP_CODES.get(exc.status),
        }
    }
    # Allow (405) and the like stay; the length and type are this body's.
    headers = {k: v for k, v in exc.headers.items()
               if k.lower() not in ("content-type", "content-length")}
    return web.Response(status=exc.status, body=orjson.dumps(body),
                        content_type="application/json", headers=headers)


@web.middleware
async def openai_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_response(request, exc)
    except KeelError as exc:
        return error_response(exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(InternalError(
            "Keel failed to handle the request; the server log has the details."))
