"""STUB (issue 8, helper "metrics" replaces this): GET /metrics."""

from aiohttp import web


def add_routes(app: web.Application) -> None:
    pass
