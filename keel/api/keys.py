"""STUB (issue 8, helper "keys" replaces this): /v1/keys."""

from aiohttp import web


def add_routes(app: web.Application) -> None:
    pass
