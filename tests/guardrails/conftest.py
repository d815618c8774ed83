"""Shared fixtures for the guardrails tests: scripted guard kinds and a Keel serving them."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig, ModelConfig, ProviderConfig
from keel.embeddings.local import LocalEmbedder, LocalOptions
from keel.gateway import Gateway
from keel.plugins import available
from tests.guardrails import fakes


@pytest.fixture(scope="module")
def minilm():
    """The embedded MiniLM, started once per module (guards that embed: topics, groundedness)."""
    embedder = LocalEmbedder("minilm", LocalOptions())
    asyncio.run(embedder.start())
    yield embedder
    asyncio.run(embedder.aclose())


@pytest.fixture
def fake_guards():
    """Register the scripted guards of fakes.py as guard kinds for one test."""
    kinds = available("keel.guards")  # the cached mapping the registry reads
    kinds.update(fakes.KINDS)
    fakes.JudgeGuard.seen.clear()
    fakes.SlowGuard.running = fakes.SlowGuard.most = 0
    yield
    for kind in fakes.KINDS:
        kinds.pop(kind, None)


def guarded_config(tmp_path, guardrails: dict, model: str = "echo", **overrides) -> KeelConfig:
    """A Keel with one model, `bot`, on the fake provider's `model`, guarded by `guardrails`."""
    return KeelConfig(
        state_dir=tmp_path,
        providers={"fake": ProviderConfig(kind="fake")},
        models={"bot": ModelConfig(provider="fake", model=model, guardrails=guardrails)},
        **overrides,
    )


@pytest.fixture
async def serve(tmp_path):
    """serve(guardrails, model=...) -> (base URL, gateway) of a Keel on a loopback socket."""
    servers = []

    async def start(guardrails: dict, model: str = "echo", **overrides):
        gateway = Gateway(guarded_config(tmp_path, guardrails, model, **overrides))
        server = TestServer(create_app(gateway), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), gateway

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session():
    async with ClientSession() as s:
        yield s
