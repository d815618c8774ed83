"""An in-process Keel (fake provider) on a real loopback socket, and a raw HTTP client to it."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig, ModelConfig, ProviderConfig, ServerConfig
from keel.gateway import Gateway


def fake_config(tmp_path, **overrides) -> KeelConfig:
    names = ["echo", "json", "bad-json", "bad-json-once", "error-429", "error-500", "tool-call",
             "slow-100", "slow-1000"]
    return KeelConfig(
        state_dir=tmp_path,
        providers={"fake": ProviderConfig(kind="fake")},
        models={f"fake/{n}": ModelConfig(provider="fake", model=n) for n in names},
        **overrides,
    )


@pytest.fixture
async def keel(tmp_path):
    """(base URL, gateway) of a Keel serving the fake provider."""
    gateway = Gateway(fake_config(tmp_path, server=ServerConfig(max_body_bytes=64 * 1024)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


@pytest.fixture
async def session():
    async with ClientSession() as s:
        yield s
