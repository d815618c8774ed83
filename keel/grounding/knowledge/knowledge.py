"""`KnowledgeBase`: the one entry point the grounding layer, the CLI and the HTTP API use.

    kb = knowledge_base(runtime)            # shared per runtime: one vector cache
    report = await kb.ingest("support", ["faq/"], prune=True)
    hits = await kb.search("support", "delete my account", top_k=4, filters={"lang": "en"})

Database work runs in worker threads (`asyncio.to_thread`), embedding on the embedder's own
terms, so a long ingest never stalls the event loop that serves requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from keel.errors import InvalidRequest
from keel.grounding.knowledge import ann, fulltext, records
from keel.grounding.knowledge.base import (
    Chunk,
    Document,
    EmbedderMismatch,
    Hit,
    IngestReport,
)
from keel.grounding.knowledge.chunking import (
    ChunkSettings,
    chunk_sections,
    estimate_tokens,
)
from keel.grounding.knowledge.fusion import (
    CONVEX_ALPHA,
    FUSIONS,
    RRF_K,
    convex_fusion,
    reciprocal_rank_fusion,
)
from keel.grounding.knowledge.ingest import (
    content_hash,
    file_hash,
    find_files,
    read_documents,
    under_roots,
)
from keel.grounding.knowledge.parsers import parse_markdown
from keel.grounding.knowledge.records import CollectionInfo
from keel.grounding.knowledge.vectors import IndexCache

DEFAULT_EMBEDDER = "minilm"
MODES = ("hybrid", "fulltext", "vector")
MAX_TOP_K = 100
EMBED_BATCH = 64
WRITE_BATCH_CHUNKS = 512  # chunks embedded and written per transaction during an ingest

Progress = Callable[[int, int], None]  # (files done, files in all)


def knowledge_base(runtime) -> KnowledgeBase:
    """The runtime's shared KnowledgeBase (so every user shares one in-memory vector cache),
    ranking as keel.yaml's `retrieval:` says."""
    kb = runtime.shared.get("knowledge")
    if kb is None:
        options = runtime.config.retrieval.model_dump(exclude_none=True)
        kb = runtime.shared["knowledge"] = KnowledgeBase(runtime, **options)
    return kb


@dataclass
class _Pending:
    """Documents waiting to be chunked, embedded and written in one transaction."""

    writes: list[tuple[Document, str, int | None]] = field(default_factory=list)
    removals: list[int] = field(default_factory=list)
    touches: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    chunk_estimate: int = 0

    def __bool__(self) -> bool:
        return bool(self.writes or self.removals or self.touches)


class KnowledgeBase:
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
        with self._engine.begin() as conn:
            return fn(conn, *args)

    # -- reading -----------------------------------------------------------------------------

    async def collections(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._read, records.list_collections)

    async def version(self, collection: str) -> str:
        info = await asyncio.to_thread(self._read, records.require_collection, collection)
        return info.version

    async def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int = 4,
        filters: dict | None = None,
        mode: str = "hybrid",
    ) -> list[Hit]:
        _check_search(query, top_k, filters, mode)
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

    # -- writing -----------------------------------------------------------------------------

    async def add_documents(
        self, collection: str, docs: list[dict[str, Any]], *, embedder: str | None = None
    ) -> list[str]:
        """Add or replace documents given as {"id"?, "text", "metadata"?, "source"?, "title"?};
        the text is read as Markdown. Returns their ids (default: a hash of the text)."""
        parsed = [_document_from_dict(d, i) for i, d in enumerate(docs)]
        info, emb = await self._writable(collection, embedder, rebuild=False)
        stored = await asyncio.to_thread(self._read, records.stored_documents, info.id)
        pending = _Pending()
        seen = set()
        for doc in parsed:
            if doc.id in seen:
                raise InvalidRequest(f"documents: id {doc.id!r} given twice", param="documents")
            seen.add(doc.id)
            digest = content_hash(doc, self.chunking.key())
            old = stored.get(doc.id)
            if old is None or old.content_hash != digest:
                pending.writes.append((doc, digest, old.pk if old else None))
        await self._flush(info, emb, pending, IngestReport())
        await asyncio.to_thread(self._write, records.refresh_version, info.id, info.fingerprint)
        return [doc.id for doc in parsed]

    async def remove_documents(self, collection: str, ids: list[str]) -> int:
        """Remove documents by id; returns how many there were."""
        def remove(conn) -> int:
            info = records.require_collection(conn, collection)
            stored = records.stored_documents(conn, info.id)
            pks = [stored[i].pk for i in ids if i in stored]
            records.delete_documents(conn, info.id, pks)
            records.refresh_version(conn, info.id, info.fingerprint)
            return len(pks)

        return await asyncio.to_thread(self._write, remove)

    async def drop(self, collection: str) -> None:
        def drop(conn) -> None:
            info = records.require_collection(conn, collection)
            records.drop_collection(conn, info)
            self._indexes.drop(info.id)

        await asyncio.to_thread(self._write, drop)

    async def ingest(
        self,
        collection: str,
        paths: list[str | os.PathLike],
        *,
        prune: bool = False,
        embedder: str | None = None,
        progress: Progress | None = None,
        text_field: str = "text",
        rebuild: bool = False,
    ) -> IngestReport:
        """Ingest files and folders; unchanged files are skipped, changed ones replaced, and
        with `prune` documents whose files are gone from under `paths` are removed.
        `embedder`: the collection's own by default, `minilm` for a new collection;
        `rebuild` empties the collection first (after an embedder change)."""
        files, roots = await asyncio.to_thread(find_files, list(paths))
        info, emb = await self._writable(collection, embedder, rebuild=rebuild)
        stored = await asyncio.to_thread(self._read, records.stored_documents, info.id)
        by_path: dict[str, list] = {}
        for doc in stored.values():
            if doc.path:
                by_path.setdefault(doc.path, []).append(doc)
        report, pending = IngestReport(), _Pending()
        settings_key = f"{self.chunking.key()}:text_field={text_field}"
        queued: set[str] = set()
        for done, path in enumerate(files, start=1):
            await self._ingest_file(path, settings_key, text_field, stored, by_path, queued,
                                    report, pending)
            if pending.chunk_estimate >= WRITE_BATCH_CHUNKS:
                await self._flush(info, emb, pending, report)
                pending = _Pending()
            if progress is not None:
                progress(done, len(files))
        if prune:
            present = {f.as_posix() for f in files}
            gone = [d.pk for d in stored.values()
                    if d.path and d.path not in present and under_roots(d.path, roots)]
            pending.removals.extend(gone)
            report.removed += len(gone)
        await self._flush(info, emb, pending, report)
        await asyncio.to_thread(self._write, records.refresh_version, info.id, info.fingerprint)
        return report

    async def _ingest_file(self, path, settings_key, text_field, stored, by_path, queued,
                           report: IngestReport, pending: _Pending) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        digest = file_hash(data, settings_key)
        posix = path.as_posix()
        old = by_path.get(posix, [])
        if old and all(d.file_hash == digest for d in old):
            report.unchanged += len(old)
            return
        docs = await asyncio.to_thread(read_documents, path, data, digest, text_field)
        for doc in docs:
            if doc.id in queued:
                raise InvalidRequest(f"{posix}: document id {doc.id!r} appears twice")
            queued.add(doc.id)
            doc_hash = content_hash(doc, self.chunking.key())
            existing = stored.get(doc.id)
            if existing is not None and existing.content_hash == doc_hash:
                report.unchanged += 1
                pending.touches.append((existing.pk, posix, digest))
                continue
            pending.writes.append((doc, doc_hash, existing.pk if existing else None))
            pending.chunk_estimate += max(1, sum(len(s.text) for s in doc.sections) // 1000)
            if existing is None:
                report.added += 1
            else:
                report.updated += 1
        new_ids = {doc.id for doc in docs}
        gone = [d.pk for d in old if d.doc_id not in new_ids]
        pending.removals.extend(gone)
        report.removed += len(gone)

    async def _writable(self, collection: str, embedder: str | None, *, rebuild: bool):
        """The collection (created if new) and its started embedder, checked to match."""
        if not collection or not isinstance(collection, str) or len(collection) > 200:
            raise InvalidRequest("collection: expected a name of 1 to 200 characters",
                                 param="collection")
        info = await asyncio.to_thread(self._read, records.get_collection, collection)
        name = embedder or (info.embedder if info is not None else DEFAULT_EMBEDDER)
        emb = await self.runtime.embedder(name)
        if info is None:
            info = await asyncio.to_thread(
                self._write, records.create_collection, collection, name, emb.fingerprint,
                emb.dim,
            )
        elif rebuild:
            info = await asyncio.to_thread(
                self._write, records.rebind_embedder, info, name, emb.fingerprint, emb.dim
            )
        elif name != info.embedder or emb.fingerprint != info.fingerprint:
            raise EmbedderMismatch(
                f"collection {collection!r} was embedded by {info.embedder!r} (fingerprint "
                f"{info.fingerprint}); {name!r} now has fingerprint {emb.fingerprint}. "
                f"Re-ingest everything with --rebuild to re-embed it.",
                param="embedder",
            )
        return info, emb

    async def _flush(self, info: CollectionInfo, emb, pending: _Pending,
                     report: IngestReport) -> None:
        if not pending:
            return
        count = getattr(emb, "count_tokens", None) or estimate_tokens
        chunked: list[list[Chunk]] = await asyncio.to_thread(
            lambda: [chunk_sections(doc.sections, self.chunking, count)
                     for doc, _, _ in pending.writes]
        )
        texts = [c.text for doc_chunks in chunked for c in doc_chunks]
        vectors = await _embed(emb, texts, info.dim)
        report.chunks += len(texts)

        def write(conn) -> None:
            records.delete_documents(conn, info.id, pending.removals)
            for pk, path, digest in pending.touches:
                records.touch_file_hash(conn, pk, path, digest)
            start = 0
            for (doc, digest, replace_pk), doc_chunks in zip(pending.writes, chunked):
                part = vectors[start:start + len(doc_chunks)]
                start += len(doc_chunks)
                records.write_document(conn, info.id, doc, digest, doc_chunks, part, replace_pk)

        await asyncio.to_thread(self._write, write)


async def _embed(embedder, texts: list[str], dim: int) -> np.ndarray:
    parts = []
    for start in range(0, len(texts), EMBED_BATCH):
        vectors = (await embedder.embed(texts[start:start + EMBED_BATCH])).vectors
        if vectors.shape[1] != dim:
            raise EmbedderMismatch(
                f"embedder gave {vectors.shape[1]}-dimensional vectors; the collection has {dim}"
            )
        parts.append(np.asarray(vectors, dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def _document_from_dict(raw: Any, index: int) -> Document:
    where = f"documents[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where}: expected an object", param="documents")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"{where}.text: expected non-empty text", param="documents")
    metadata = raw.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"{where}.metadata: expected an object", param="documents")
    for key in ("id", "source", "title"):
        if raw.get(key) is not None and not isinstance(raw[key], (str, int)):
            raise InvalidRequest(f"{where}.{key}: expected a string", param="documents")
    unknown = set(raw) - {"id", "text", "metadata", "source", "title"}
    if unknown:
        raise InvalidRequest(f"{where}: unknown field {sorted(unknown)[0]!r}", param="documents")
    doc_id = str(raw["id"]) if raw.get("id") is not None else _text_id(text)
    doc = parse_markdown(text, doc_id)
    doc.metadata = {**doc.metadata, **metadata}
    doc.source = str(raw["source"]) if raw.get("source") is not None else doc_id
    doc.title = str(raw["title"]) if raw.get("title") is not None else doc.title
    return doc


def _text_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_search(query: Any, top_k: Any, filters: Any, mode: Any) -> None:
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
