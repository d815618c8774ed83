"""What layers share at run time: the store and the embedders, opened once by the gateway.

A layer receives the `Runtime` when it is built and may use it from `start()` on. Resources are
opened lazily, so a gateway whose layers need no store or embedder pays nothing for them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class Runtime:
    def __init__(self, config, embedder_factory: Callable[[str], Any] | None = None):
        self.config = config  # keel.config.KeelConfig: layers read their registries from it
        self.database_url = config.database_url()
        # One object per layer package that several layer instances share (e.g. the tool
        # registry: one MCP server process for every model that offers its tools).
        self.shared: dict[str, Any] = {}
        # The gateway's providers by name (keel.yaml `providers:`), for layers that call more
        # than their route's own (the router's deployments and fallbacks).
        self.providers: dict[str, Any] = {}
        self._store = None
        self._state = None
        self._metrics = None
        if embedder_factory is None:
            from functools import partial

            from keel.embeddings.registry import make_embedder

            embedder_factory = partial(make_embedder, config)
        self._embedder_factory = embedder_factory
        self._embedders: dict[str, Any] = {}
        self._embedder_locks: dict[str, asyncio.Lock] = {}

    @property
    def store(self):
        """The store (SQLAlchemy engine, migrated to head), opened on first use."""
        if self._store is None:
            from keel.store import open_store

            self._store = open_store(self.database_url)
        return self._store

    @property
    def state(self):
        """State shared with the other replicas (keel.state): rate-limit buckets, counters."""
        if self._state is None:
            from keel.state import open_state

            self._state = open_state(self.config.state)
        return self._state

    @property
    def metrics(self):
        """The process's Prometheus metrics (keel.ops.metrics.Metrics); layers register their
        own counters on it (`metrics.counter(...)`) when they start."""
        if self._metrics is None:
            from keel.ops.metrics import Metrics

            self._metrics = Metrics()
        return self._metrics

    async def embedder(self, name: str):
        """A started embedder by its name in keel.yaml (`embedders:`), loaded on first use."""
        embedder = self._embedders.get(name)
        if embedder is not None:
            return embedder
        lock = self._embedder_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._embedders:
                embedder = self._embedder_factory(name)
                await embedder.start()
                self._embedders[name] = embedder
        return self._embedders[name]

    async def aclose(self) -> None:
        for embedder in self._embedders.values():
            await embedder.aclose()
        self._embedders.clear()
        if self._state is not None:
            await self._state.aclose()
            self._state = None
        if self._store is not None:
            self._store.close()
            self._store = None
