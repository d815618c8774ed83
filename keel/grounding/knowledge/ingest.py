"""Writing: the half of `KnowledgeBase` that ingests files, adds and removes documents.

Files are found, hashed and parsed by files.py; here documents are chunked, embedded (a batch
of about `WRITE_BATCH_CHUNKS` chunks at a time, so memory stays flat on a large corpus) and
written, one transaction per batch. Every write transaction locks its collection first (see
records.py), and documents are upserted on their id, so concurrent writers — two posts of the
same document, two ingests into a new collection — take turns instead of failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from keel.errors import InvalidRequest
from keel.grounding.knowledge import records
from keel.grounding.knowledge.base import Chunk, Document, EmbedderMismatch, IngestReport
from keel.grounding.knowledge.chunking import chunk_sections, estimate_tokens
from keel.grounding.knowledge.files import (
    content_hash,
    file_hash,
    find_files,
    legacy_ids,
    read_documents,
    under_roots,
)
from keel.grounding.knowledge.parsers import parse_markdown
from keel.grounding.knowledge.records import CollectionInfo

DEFAULT_EMBEDDER = "minilm"
EMBED_BATCH = 64
WRITE_BATCH_CHUNKS = 512  # chunks embedded and written per transaction during an ingest

Progress = Callable[[int, int], None]  # (files done, files in all)


@dataclass
class _Pending:
    """Documents waiting to be chunked, embedded and written in one transaction."""

    writes: list[tuple[Document, str]] = field(default_factory=list)
    removals: list[int] = field(default_factory=list)
    touches: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    chunk_estimate: int = 0

    def __bool__(self) -> bool:
        return bool(self.writes or self.removals or self.touches)


class IngestMixin:
    """Needs `runtime`, `chunking`, `_indexes`, `_read` and `_write` of KnowledgeBase."""

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
                pending.writes.append((doc, digest))
        if pending:
            await self._flush(info, emb, pending, IngestReport(), refresh=True)
        return [doc.id for doc in parsed]

    async def remove_documents(self, collection: str, ids: list[str]) -> int:
        """Remove documents by id; returns how many there were."""
        def remove(conn) -> int:
            info = records.require_collection(conn, collection)
            records.lock_collection(conn, info.id)
            stored = records.stored_documents(conn, info.id)
            pks = [stored[i].pk for i in ids if i in stored]
            records.delete_documents(conn, info.id, pks)
            records.refresh_version(conn, info.id, info.fingerprint)
            return len(pks)

        return await asyncio.to_thread(self._write, remove)

    async def drop(self, collection: str) -> None:
        def drop(conn) -> None:
            info = records.require_collection(conn, collection)
            records.lock_collection(conn, info.id)
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
        for done, (path, root) in enumerate(files.items(), start=1):
            await self._ingest_file(path, root, settings_key, text_field, stored, by_path,
                                    queued, report, pending)
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
        await self._flush(info, emb, pending, report, refresh=True)
        return report

    async def _ingest_file(self, path, root, settings_key, text_field, stored, by_path, queued,
                           report: IngestReport, pending: _Pending) -> None:
        data = await asyncio.to_thread(path.read_bytes)
        digest = file_hash(data, settings_key)
        posix = path.as_posix()
        old = by_path.get(posix, [])
        if (old and all(d.file_hash == digest for d in old)
                and not legacy_ids([d.doc_id for d in old], path)):
            report.unchanged += len(old)
            return
        docs = await asyncio.to_thread(read_documents, path, root, data, digest, text_field)
        for doc in docs:
            if doc.id in queued:
                raise InvalidRequest(
                    f"{posix}: document id {doc.id!r} appears twice (two of the paths hold a "
                    f"file at the same relative path: ingest them into separate collections)"
                )
            queued.add(doc.id)
            doc_hash = content_hash(doc, self.chunking.key())
            existing = stored.get(doc.id)
            if existing is not None and existing.content_hash == doc_hash:
                report.unchanged += 1
                pending.touches.append((existing.pk, posix, digest))
                continue
            pending.writes.append((doc, doc_hash))
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
            # Another writer may create it at the same moment: then we get theirs, checked below.
            info = await asyncio.to_thread(
                self._write, records.ensure_collection, collection, name, emb.fingerprint,
                emb.dim,
            )
        if rebuild:
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
                     report: IngestReport, *, refresh: bool = False) -> None:
        """Write what is pending in one transaction; `refresh` recomputes the version in it."""
        if not pending and not refresh:
            return
        count = getattr(emb, "count_tokens", None) or estimate_tokens
        chunked: list[list[Chunk]] = await asyncio.to_thread(
            lambda: [chunk_sections(doc.sections, self.chunking, count)
                     for doc, _ in pending.writes]
        )
        texts = [c.text for doc_chunks in chunked for c in doc_chunks]
        vectors = await _embed(emb, texts, info.dim)
        report.chunks += len(texts)

        def write(conn) -> None:
            records.lock_collection(conn, info.id)
            records.delete_documents(conn, info.id, pending.removals)
            for pk, path, digest in pending.touches:
                records.touch_file_hash(conn, pk, path, digest)
            start = 0
            for (doc, digest), doc_chunks in zip(pending.writes, chunked):
                part = vectors[start:start + len(doc_chunks)]
                start += len(doc_chunks)
                records.write_document(conn, info.id, doc, digest, doc_chunks, part)
            if refresh:
                records.refresh_version(conn, info.id, info.fingerprint)

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
