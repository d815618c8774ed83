"""`KnowledgeBase`: the one entry point the grounding layer, the CLI and the HTTP API use.

    kb = knowledge_base(runtime)            # shared per runtime: one vector cache
    report = await kb.ingest("support", ["faq/"], prune=True)
    hits = await kb.search("support", "delete my account", top_k=4, filters={"lang": "en"})

Its two halves live beside it: writing (ingest, add, remove, drop) in ingest.py, searching in
search.py. Database work runs in worker threads (`asyncio.to_thread`), embedding on the
embedder's own terms, so a long ingest never stalls the event loop that serves requests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from keel.grounding.knowledge import records
from keel.store import ann
from keel.grounding.knowledge.chunking import ChunkSettings
from keel.grounding.knowledge.fusion import CONVEX_ALPHA, FUSIONS, RRF_K
from keel.grounding.knowledge.ingest import IngestMixin
# MAX_TOP_K and MODES are imported from here by the OpenAPI document.
from keel.grounding.knowledge.search import MAX_TOP_K, MODES, SearchMixin  # noqa: F401
from keel.store.vectors import IndexCache


def knowledge_base(runtime) -> KnowledgeBase:
    """The runtime's shared KnowledgeBase (so every user shares one in-memory vector cache),
    ranking as keel.yaml's `retrieval:` says."""
    kb = runtime.shared.get("knowledge")
    if kb is None:
        options = runtime.config.retrieval.model_dump(exclude_none=True)
        kb = runtime.shared["knowledge"] = KnowledgeBase(runtime, **options)
    return kb


class KnowledgeBase(SearchMixin, IngestMixin):
    def __init__(
        self,
        runtime,
        *,
        chunking: ChunkSettings = ChunkSettings(),
        candidates: int = 50,
        fusion: str = "convex",
        alpha: float = CONVEX_ALPHA,
        rrf_k: int = RRF_K,
        weights: dict[str, float] | None = None,
        index: str = "exact",
        ann_threshold: int = ann.ANN_THRESHOLD,
    ) -> None:
        """`fusion`: how hybrid search merges its two lists — `convex` (α·cosine +
        (1−α)·normalised bm25, `alpha`) or `rrf` (reciprocal rank fusion, `rrf_k`, `weights`);
        see fusion.py. `index`: the vector index — `exact`, `ann` (HNSW, needs the `ann`
        extra) or `auto` (ann from `ann_threshold` chunks when installed); see ann.py."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {', '.join(FUSIONS)}, not {fusion!r}")
        if index not in ann.INDEXES:
            raise ValueError(f"index: expected one of {', '.join(ann.INDEXES)}, not {index!r}")
        if index == "ann":
            ann.require()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a number from 0 to 1, not {alpha!r}")
        self.runtime = runtime
        self.chunking = chunking
        # How deep each method's list goes before fusion: deeper lets a passage ranked low
        # by one method but high by the other still win.
        self.candidates = candidates
        self.fusion = fusion
        self.alpha = alpha
        self.rrf_k = rrf_k
        self.weights = weights
        self.index = index
        self.ann_threshold = ann_threshold
        # One cache per kind of index, so knowledge bases asking for different kinds sharing
        # a runtime each get their own.
        cache = "knowledge.vectors" if index == "exact" else f"knowledge.vectors.{index}"
        self._indexes: IndexCache = runtime.shared.setdefault(cache, IndexCache())

    @property
    def _engine(self):
        return self.runtime.store.engine

    def _read(self, fn, *args):
        with self._engine.connect() as conn:
            return fn(conn, *args)

    def _write(self, fn, *args):
        # IMMEDIATE on SQLite: the write lock is taken at BEGIN, so a transaction that reads
        # before it writes queues on busy_timeout instead of failing when another wrote first.
        with self._engine.connect().execution_options(sqlite_immediate=True) as conn:
            with conn.begin():
                return fn(conn, *args)

    async def collections(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._read, records.list_collections)

    async def documents(self, collection: str, *, offset: int = 0,
                        limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """A page of a collection's documents (id order, with chunk counts) and their total."""

        def read(conn):
            info = records.require_collection(conn, collection)
            return records.list_documents(conn, info.id, offset=offset, limit=limit)

        return await asyncio.to_thread(self._read, read)

    async def version(self, collection: str) -> str:
        info = await asyncio.to_thread(self._read, records.require_collection, collection)
        return info.version
