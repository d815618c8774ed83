"""Typed aiohttp application keys: what the app carries (the `Gateway`), not API keys."""

from aiohttp import web

from keel.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
