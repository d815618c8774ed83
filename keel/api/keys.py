"""Virtual keys over HTTP (admin only: keel.api.auth maps /v1/keys* to the `admin` surface).

    POST   /v1/keys                {name, models?, surfaces?, rpm?, tpm?, budget_usd?, period?,
                                    expires? ("30d"), metadata?} -> 201 key + "secret"
    GET    /v1/keys                {"object": "list", "data": [key, ...]}
    GET    /v1/keys/{key_id}       key
    DELETE /v1/keys/{key_id}       revokes it -> key (status "revoked")
    POST   /v1/keys/{key_id}/rotate  key + the new "secret"

A key is `KeyRecord.to_dict()`; the secret appears only in the answers that create it, and is
never logged or traced. After a revoke or a rotation this replica drops its cached keys at once
(the others notice within `auth.refresh_interval_s`). An unknown key is a 404 `key_not_found`; a
bad field a 400 naming it.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.body import read_json, reject_nul
from keel.api.errors import error_response
from keel.errors import InvalidRequest, KeelError
from keel.ops.keys import KeyRecord, KeyStore, parse_duration

# An answer holding a secret must not linger in a proxy's or a browser's cache.
_NO_STORE = {"Cache-Control": "no-store"}
FIELDS = ("name", "models", "surfaces", "rpm", "tpm", "budget_usd", "period", "expires",
          "metadata")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/keys", create_key)
    app.router.add_get("/v1/keys", list_keys)
    app.router.add_get("/v1/keys/{key_id}", get_key)
    app.router.add_delete("/v1/keys/{key_id}", revoke_key)
    app.router.add_post("/v1/keys/{key_id}/rotate", rotate_key)


async def create_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        body = await read_json(request, gateway.config.server.max_body_bytes)
        reject_nul(body)
        fields = _validated(body)
        record, secret = await asyncio.to_thread(_keys(request).create, **fields)
    except KeelError as exc:
        return error_response(exc)
    return _json(_with_secret(record, secret), status=201, headers=_NO_STORE)


async def list_keys(request: web.Request) -> web.Response:
    records = await asyncio.to_thread(_keys(request).list)
    return _json({"object": "list", "data": [r.to_dict() for r in records]})


async def get_key(request: web.Request) -> web.Response:
    try:
        record = await asyncio.to_thread(_keys(request).get, _key_id(request))
    except KeelError as exc:
        return error_response(exc)
    return _json(record.to_dict())


async def revoke_key(request: web.Request) -> web.Response:
    try:
        record = await asyncio.to_thread(_keys(request).revoke, _key_id(request))
    except KeelError as exc:
        return error_response(exc)
    _invalidate(request)
    return _json(record.to_dict())


async def rotate_key(request: web.Request) -> web.Response:
    try:
        if request.can_read_body:  # no fields to send; a body, if any, is still checked
            body = await read_json(request, request.app[GATEWAY].config.server.max_body_bytes)
            if not isinstance(body, dict):
                raise InvalidRequest("expected a JSON object (or no body)")
            if body:
                name = sorted(body)[0]
                raise InvalidRequest(f"Unrecognized request argument supplied: {name}",
                                     param=name)
        record, secret = await asyncio.to_thread(_keys(request).rotate, _key_id(request))
    except KeelError as exc:
        return error_response(exc)
    _invalidate(request)
    return _json(_with_secret(record, secret), headers=_NO_STORE)


def _validated(body) -> dict:
    """The body as KeyStore.create's arguments; the store checks the values themselves."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}",
                             param=unknown[0])
    if "name" not in body:
        raise InvalidRequest("name: required", param="name")
    fields = {name: body.get(name) for name in FIELDS if name != "expires"}
    expires = body.get("expires")
    if expires is not None and not isinstance(expires, str):
        raise InvalidRequest("expires: expected a duration like 90m, 12h, 30d or 2w",
                             param="expires")
    fields["expires_in_s"] = parse_duration(expires) if expires is not None else None
    return fields


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    reject_nul(key_id, "id")
    return key_id


def _keys(request: web.Request) -> KeyStore:
    return KeyStore(request.app[GATEWAY].runtime.store)


def _invalidate(request: web.Request) -> None:
    # This replica refuses the old secret at once rather than at its next version poll.
    cache = request.app[GATEWAY].keys
    if cache is not None:
        cache.invalidate()


def _with_secret(record: KeyRecord, secret: str) -> dict:
    return {**record.to_dict(), "secret": secret}


def _json(value, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), headers=headers,
                        content_type="application/json")
