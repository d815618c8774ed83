"""The knowledge store's data types and its two errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from keel.errors import InvalidRequest, NotFound


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class EmbedderMismatch(InvalidRequest):
    """The collection's vectors were made by an embedder that is no longer the configured one."""

    status = 409
    code = "embedder_mismatch"


@dataclass
class Section:
    """A stretch of a document under one heading path (or on one page)."""

    location: str  # "Account > Delete your account", "page 3", or "" for a flat text
    text: str
    # Heading paths are worth indexing with the text ("Billing > Refunds" says what a bare
    # paragraph leaves implicit); a page number is not.
    prefix_location: bool = True


@dataclass
class Document:
    """A parsed document, before chunking."""

    id: str
    sections: list[Section]
    source: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # the file it came from, for incremental ingest and prune
    file_hash: str | None = None


@dataclass
class Chunk:
    text: str  # what is indexed and shown: the heading path, a blank line, the passage
    location: str
    ordinal: int
    tokens: int


@dataclass
class Hit:
    chunk_id: str  # "<document id>#<ordinal>": stable across re-ingests of the same content
    document_id: str
    text: str
    score: float  # hybrid: the fused score (convex by default, or RRF); else the method's own
    scores: dict[str, float]  # each method's raw score: {"vector": cosine, "fulltext": bm25}
    source: str | None
    location: str
    metadata: dict[str, Any]
    title: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestReport:
    """Documents added, updated, unchanged and removed, and chunks written."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
