"""Typed keys for what the aiohttp application carries."""

from aiohttp import web

from keel.gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
