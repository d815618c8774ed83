"""The knowledge store's SQL: collections, documents and chunks, on SQLite and PostgreSQL.

All functions are synchronous and take an open SQLAlchemy connection; the facade runs them in
a worker thread. A collection's `version` is a hash over its (document id, content hash) pairs
and its embedder's fingerprint, so it changes exactly when what a search can return changes,
and re-ingesting identical content gives back the same version.

Concurrent writers (two HTTP posts, two `keel ingest` processes) are safe on both databases:
a collection is created with INSERT … ON CONFLICT DO NOTHING, a document is upserted on its
(collection, id) key, and every write transaction first locks its collection's row
(`lock_collection`; SQLite's write lock does this for the whole file), so writers to one
collection take turns and the version each one computes covers what the others committed.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from keel.errors import InvalidRequest
from keel.grounding.knowledge.base import Chunk, CollectionNotFound, Document
from keel.store.models import knowledge_chunks as chunks
from keel.store.models import knowledge_collections as collections
from keel.store.models import knowledge_documents as documents

_FILTER_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    embedder: str
    fingerprint: str
    dim: int
    version: str


@dataclass(frozen=True)
class StoredDocument:
    pk: int
    doc_id: str
    path: str | None
    file_hash: str | None
    content_hash: str


# -- collections -----------------------------------------------------------------------------


def get_collection(conn: Connection, name: str) -> CollectionInfo | None:
    row = conn.execute(
        sa.select(collections.c.id, collections.c.name, collections.c.embedder,
                  collections.c.fingerprint, collections.c.dim, collections.c.version)
        .where(collections.c.name == name)
    ).first()
    return CollectionInfo(*row) if row else None


def require_collection(conn: Connection, name: str) -> CollectionInfo:
    info = get_collection(conn, name)
    if info is None:
        raise CollectionNotFound(f"no knowledge collection named {name!r}", param="collection")
    return info


def ensure_collection(
    conn: Connection, name: str, embedder: str, fingerprint: str, dim: int
) -> CollectionInfo:
    """The collection, created with this embedder unless it exists (perhaps made a moment ago
    by a concurrent writer: then its own embedder is returned, for the caller to check)."""
    now = time.time()
    conn.execute(
        _insert(conn).on_conflict_do_nothing(index_elements=["name"]),
        {"name": name, "embedder": embedder, "fingerprint": fingerprint, "dim": dim,
         "version": _version_hash([], fingerprint), "created_at": now, "updated_at": now},
    )
    return require_collection(conn, name)


def lock_collection(conn: Connection, collection_id: int) -> None:
    """Take the collection's row lock for the rest of the transaction (PostgreSQL; SQLite's
    write transaction already excludes every other writer)."""
    query = sa.select(collections.c.id).where(collections.c.id == collection_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    if conn.execute(query).first() is None:
        raise CollectionNotFound("the knowledge collection was dropped while being written",
                                 param="collection")


def _insert(conn: Connection, table: sa.Table = collections):
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def rebind_embedder(conn: Connection, info: CollectionInfo, embedder: str, fingerprint: str,
                    dim: int) -> CollectionInfo:
    """Empty the collection and record a new embedder for it (a rebuild)."""
    delete_documents(conn, info.id, None)
    conn.execute(
        collections.update().where(collections.c.id == info.id),
        {"embedder": embedder, "fingerprint": fingerprint, "dim": dim},
    )
    return CollectionInfo(info.id, info.name, embedder, fingerprint, dim,
                          refresh_version(conn, info.id, fingerprint))


def list_collections(conn: Connection) -> list[dict[str, Any]]:
    doc_counts = dict(conn.execute(
        sa.select(documents.c.collection_id, sa.func.count()).group_by(documents.c.collection_id)
    ).all())
    chunk_counts = dict(conn.execute(
        sa.select(chunks.c.collection_id, sa.func.count()).group_by(chunks.c.collection_id)
    ).all())
    rows = conn.execute(sa.select(collections).order_by(collections.c.name)).mappings().all()
    return [
        {"name": r["name"], "documents": doc_counts.get(r["id"], 0),
         "chunks": chunk_counts.get(r["id"], 0), "embedder": r["embedder"],
         "fingerprint": r["fingerprint"], "dim": r["dim"], "version": r["version"],
         "created_at": r["created_at"], "updated_at": r["updated_at"]}
        for r in rows
    ]


def drop_collection(conn: Connection, info: CollectionInfo) -> None:
    delete_documents(conn, info.id, None)
    conn.execute(collections.delete().where(collections.c.id == info.id))


def refresh_version(conn: Connection, collection_id: int, fingerprint: str) -> str:
    pairs = conn.execute(
        sa.select(documents.c.doc_id, documents.c.content_hash)
        .where(documents.c.collection_id == collection_id)
        .order_by(documents.c.doc_id)
    ).all()
    version = _version_hash(pairs, fingerprint)
    conn.execute(
        collections.update().where(collections.c.id == collection_id),
        {"version": version, "updated_at": time.time()},
    )
    return version


def _version_hash(pairs: Iterable[tuple[str, str]], fingerprint: str) -> str:
    digest = hashlib.sha256(fingerprint.encode())
    for doc_id, content_hash in pairs:
        digest.update(b"\0" + doc_id.encode() + b"\0" + content_hash.encode())
    return digest.hexdigest()[:16]


# -- documents -------------------------------------------------------------------------------


def stored_documents(conn: Connection, collection_id: int) -> dict[str, StoredDocument]:
    rows = conn.execute(
        sa.select(documents.c.id, documents.c.doc_id, documents.c.path, documents.c.file_hash,
                  documents.c.content_hash)
        .where(documents.c.collection_id == collection_id)
    ).all()
    return {row.doc_id: StoredDocument(*row) for row in rows}


def list_documents(conn: Connection, collection_id: int, *, offset: int = 0,
                   limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """A page of the collection's documents in id order, each with its chunk count, and how
    many documents it has in all."""
    total = conn.execute(
        sa.select(sa.func.count()).select_from(documents)
        .where(documents.c.collection_id == collection_id)
    ).scalar_one()
    counts = (sa.select(chunks.c.document_id, sa.func.count().label("chunks"))
              .where(chunks.c.collection_id == collection_id)
              .group_by(chunks.c.document_id).subquery())
    rows = conn.execute(
        sa.select(documents.c.doc_id, documents.c.source, documents.c.title, documents.c.path,
                  documents.c.metadata, documents.c.updated_at,
                  sa.func.coalesce(counts.c.chunks, 0).label("chunks"))
        .outerjoin(counts, counts.c.document_id == documents.c.id)
        .where(documents.c.collection_id == collection_id)
        .order_by(documents.c.doc_id).offset(offset).limit(limit)
    ).mappings().all()
    return [{**row, "metadata": row["metadata"] or {}} for row in rows], int(total)


def delete_documents(conn: Connection, collection_id: int, pks: list[int] | None) -> None:
    """Delete these documents (all of the collection's when `pks` is None) and their chunks."""
    # Chunks first and explicitly, so SQLite's FTS triggers see every deleted row.
    chunk_where = [chunks.c.collection_id == collection_id]
    doc_where = [documents.c.collection_id == collection_id]
    if pks is not None:
        if not pks:
            return
        chunk_where.append(chunks.c.document_id.in_(pks))
        doc_where.append(documents.c.id.in_(pks))
    conn.execute(chunks.delete().where(*chunk_where))
    conn.execute(documents.delete().where(*doc_where))


def write_document(
    conn: Connection, collection_id: int, doc: Document, content_hash: str,
    doc_chunks: list[Chunk], vectors: np.ndarray,
) -> None:
    """Insert a document and its chunks, replacing the stored one with the same id (upserted
    on its key, so a concurrent writer of the same id cannot make this fail)."""
    values = {"source": doc.source, "title": doc.title, "path": doc.path,
              "file_hash": doc.file_hash, "content_hash": content_hash,
              "metadata": doc.metadata or None, "updated_at": time.time()}
    insert = _insert(conn, documents).values(collection_id=collection_id, doc_id=doc.id, **values)
    pk = conn.execute(
        insert.on_conflict_do_update(index_elements=["collection_id", "doc_id"], set_=values)
        .returning(documents.c.id)
    ).scalar_one()
    # Chunks explicitly, so SQLite's FTS triggers see every deleted row.
    conn.execute(chunks.delete().where(chunks.c.document_id == pk))
    if doc_chunks:
        blobs = np.ascontiguousarray(vectors, dtype="<f4")
        conn.execute(chunks.insert(), [
            {"collection_id": collection_id, "document_id": pk, "ordinal": c.ordinal,
             "text": c.text, "location": c.location, "tokens": c.tokens,
             "metadata": doc.metadata or None, "embedding": blobs[i].tobytes()}
            for i, c in enumerate(doc_chunks)
        ])


def touch_file_hash(conn: Connection, pk: int, path: str | None, file_hash: str | None) -> None:
    conn.execute(documents.update().where(documents.c.id == pk),
                 {"path": path, "file_hash": file_hash})


# -- chunks ----------------------------------------------------------------------------------


def load_vectors(conn: Connection, collection_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, matrix of their unit vectors), in id order."""
    rows = conn.execute(
        sa.select(chunks.c.id, chunks.c.embedding)
        .where(chunks.c.collection_id == collection_id).order_by(chunks.c.id)
    ).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
    return ids, matrix.reshape(len(rows), dim).astype(np.float32, copy=False)


def chunk_rows(conn: Connection, ids: list[int]) -> dict[int, dict[str, Any]]:
    if not ids:
        return {}
    rows = conn.execute(
        sa.select(chunks.c.id, chunks.c.ordinal, chunks.c.text, chunks.c.location,
                  chunks.c.metadata, documents.c.doc_id, documents.c.source, documents.c.title)
        .join(documents, documents.c.id == chunks.c.document_id)
        .where(chunks.c.id.in_(ids))
    ).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def filtered_chunk_ids(conn: Connection, collection_id: int, filters: dict[str, Any]) -> np.ndarray:
    rows = conn.execute(
        sa.select(chunks.c.id).where(chunks.c.collection_id == collection_id,
                                     *filter_clauses(conn.dialect.name, filters))
    ).scalars().all()
    return np.asarray(rows, dtype=np.int64)


def filter_clauses(dialect: str, filters: dict[str, Any] | None) -> list:
    """Equality on metadata keys, as SQL: {"lang": "en", "year": 2024}."""
    clauses = []
    for key, value in (filters or {}).items():
        check_filter(key, value)
        if dialect == "postgresql":
            # ->> gives JSON scalars as text: 'en', '2024', 'true'.
            text = str(value).lower() if isinstance(value, bool) else str(value)
            clauses.append(chunks.c.metadata.op("->>")(sa.literal(key)) == text)
        else:
            # json_extract gives SQL values of the JSON type: text, integer, real, 1/0.
            path = f'$."{key}"'
            clauses.append(sa.func.json_extract(chunks.c.metadata, path) == value)
    return clauses


def check_filter(key: Any, value: Any) -> None:
    if not isinstance(key, str) or not _FILTER_KEY.match(key):
        raise InvalidRequest(
            f"filters: bad key {key!r} (letters, digits, '_', '.', '-')", param="filters"
        )
    if not isinstance(value, (str, int, float, bool)):
        raise InvalidRequest(
            f"filters.{key}: expected a string, number or boolean", param="filters"
        )
