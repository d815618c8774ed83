"""Knowledge store fixtures: every store test runs on SQLite and (when configured) PostgreSQL,
with the deterministic `fake` embedder (hashed bag of words) standing in for MiniLM."""

from __future__ import annotations

import pytest

from keel.config import KeelConfig, StoreConfig
from keel.embeddings.fake import FakeEmbedder, FakeOptions
from keel.grounding.knowledge import KnowledgeBase
from keel.pipeline.runtime import Runtime
from tests.store.backends import db_url  # noqa: F401  (fixture)

DIM = 256


def fake_factory(name: str, dim: int = DIM) -> FakeEmbedder:
    return FakeEmbedder(name, FakeOptions(dim=dim))


def make_runtime(url: str, factory=fake_factory) -> Runtime:
    return Runtime(KeelConfig(store=StoreConfig(url=url)), embedder_factory=factory)


@pytest.fixture
async def runtime(db_url):  # noqa: F811
    runtime = make_runtime(db_url)
    yield runtime
    await runtime.aclose()


@pytest.fixture
def kb(runtime):
    return KnowledgeBase(runtime)
