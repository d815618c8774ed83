"""STUB (issue 8, helper "auth" replaces this): the auth middleware."""

from __future__ import annotations

from aiohttp import web

from keel.ops.principal import ANONYMOUS

PRINCIPAL = "keel.principal"


def principal_of(request: web.Request):
    return request.get(PRINCIPAL, ANONYMOUS)


@web.middleware
async def authenticate(request: web.Request, handler):
    return await handler(request)
