"""Read a JSON request body within the configured size limit."""

from __future__ import annotations

import orjson
from aiohttp import web

from keel.errors import InvalidRequest, PayloadTooLarge


async def read_json(request: web.Request, limit: int):
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, limit) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "Send a JSON object with the Content-Type application/json."
        ) from None


def _too_large(size: int | None, limit: int) -> PayloadTooLarge:
    got = f"is {size} bytes" if size is not None else "is too large"
    return PayloadTooLarge(
        f"The request body {got}; the limit is {limit} bytes (server.max_body_bytes)."
    )
