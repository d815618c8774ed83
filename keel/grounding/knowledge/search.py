"""Search: the reading half of `KnowledgeBase` (full text, vectors, and their fusion).

A search embeds the query with the collection's own embedder (refusing if its fingerprint has
changed), ranks by bm25 and by cosine in a worker thread, and fuses the two lists as the
knowledge base's `fusion` says (convex by default; see fusion.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from keel.errors import InvalidRequest
from keel.grounding.knowledge import fulltext, records
from keel.store import ann
from keel.grounding.knowledge.base import EmbedderMismatch, Hit
from keel.grounding.knowledge.fusion import convex_fusion, reciprocal_rank_fusion
from keel.grounding.knowledge.records import CollectionInfo

MODES = ("hybrid", "fulltext", "vector")
MAX_TOP_K = 100


class SearchMixin:
    """Needs `runtime`, `_engine`, `_indexes` and the ranking settings of KnowledgeBase."""

    async def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 4,
        filters: dict | None = None,
        mode: str = "hybrid",
    ) -> list[Hit]:
        check_search(query, top_k, filters, mode)
        info = await asyncio.to_thread(self._read, records.require_collection, collection)
        query_vector = None
        if mode != "fulltext":
            embedder = await self._embedder_for(info)
            query_vector = (await embedder.embed([query])).vectors[0]
        return await asyncio.to_thread(
            self._search, info, query, query_vector, top_k, filters or {}, mode
        )

    def _search(self, info, query, query_vector, top_k, filters, mode) -> list[Hit]:
        depth = top_k if mode != "hybrid" else max(self.candidates, top_k)
        with self._engine.connect() as conn:
            ranked: dict[str, list[tuple[int, float]]] = {}
            if mode != "vector":
                ranked["fulltext"] = fulltext.search(conn, info.id, query, depth, filters)
            if mode != "fulltext":
                index = self._indexes.get(
                    info.id, info.version,
                    lambda: ann.build_index(self.index,
                                            *records.load_vectors(conn, info.id, info.dim),
                                            threshold=self.ann_threshold),
                )
                allowed = records.filtered_chunk_ids(conn, info.id, filters) if filters else None
                ranked["vector"] = index.search(query_vector, depth, allowed)
            raw = {name: dict(pairs) for name, pairs in ranked.items()}
            if mode == "hybrid":
                # Every candidate gets its cosine, found by full text or not: the fusion and
                # the grounding layer's similarity threshold both read it.
                missing = [cid for cid in raw["fulltext"] if cid not in raw["vector"]]
                raw["vector"].update(index.similarities(query_vector, missing))
                fused = self._fuse(ranked, raw)[:top_k]
            else:
                fused = ranked[mode][:top_k]
            rows = records.chunk_rows(conn, [cid for cid, _ in fused])
        return [
            _hit(rows[cid], score, {name: s[cid] for name, s in raw.items() if cid in s})
            for cid, score in fused if cid in rows
        ]

    def _fuse(self, ranked, raw) -> list[tuple[int, float]]:
        if self.fusion == "rrf":
            return reciprocal_rank_fusion(
                {name: [cid for cid, _ in pairs] for name, pairs in ranked.items()},
                k=self.rrf_k, weights=self.weights,
            )
        return convex_fusion(raw["fulltext"], raw["vector"], alpha=self.alpha)

    async def _embedder_for(self, info: CollectionInfo):
        embedder = await self.runtime.embedder(info.embedder)
        if embedder.fingerprint != info.fingerprint:
            raise EmbedderMismatch(
                f"collection {info.name!r} was embedded by {info.embedder!r} with fingerprint "
                f"{info.fingerprint}, but that embedder's fingerprint is now "
                f"{embedder.fingerprint}; re-ingest it: keel ingest PATH... "
                f"--collection {info.name} --rebuild",
                param="collection",
            )
        return embedder


def check_search(query: Any, top_k: Any, filters: Any, mode: Any) -> None:
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("query: expected non-empty text", param="query")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k: expected an integer from 1 to {MAX_TOP_K}", param="top_k")
    if mode not in MODES:
        raise InvalidRequest(f"mode: expected one of {', '.join(MODES)}", param="mode")
    if filters is not None and not isinstance(filters, dict):
        raise InvalidRequest("filters: expected an object of metadata key → value",
                             param="filters")
    for key, value in (filters or {}).items():
        records.check_filter(key, value)


def _hit(row: dict[str, Any], score: float, scores: dict[str, float]) -> Hit:
    return Hit(
        chunk_id=f"{row['doc_id']}#{row['ordinal']}",
        document_id=row["doc_id"],
        text=row["text"],
        score=float(score),
        scores=scores,
        source=row["source"],
        location=row["location"] or "",
        metadata=row["metadata"] or {},
        title=row["title"],
    )
