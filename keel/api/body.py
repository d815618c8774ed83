"""Read a JSON request body within the configured size limit; refuse text a store cannot hold."""

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


def reject_nul(value, param: str = "") -> None:
    """Raise InvalidRequest, naming where, if a string in `value` (keys included) holds a NUL
    character: PostgreSQL's text cannot store one, so a body that will be stored is refused on
    every backend alike rather than failing on one of them with a 500."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest(
                f"{param or 'the body'} contains a NUL character (\\u0000), which Keel "
                "cannot store", param=param or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{param}.{key}" if param else str(key)
            reject_nul(key, where)
            reject_nul(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            reject_nul(item, f"{param}[{i}]")


def _too_large(size: int | None, limit: int) -> PayloadTooLarge:
    got = f"is {size} bytes" if size is not None else "is too large"
    return PayloadTooLarge(
        f"The request body {got}; the limit is {limit} bytes (server.max_body_bytes)."
    )
