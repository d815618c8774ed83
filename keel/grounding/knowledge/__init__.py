"""The knowledge store: named collections of documents, chunked, embedded and searched.

    kb = KnowledgeBase(runtime)
    await kb.ingest("support", ["docs/faq"])               # Markdown, text, HTML, PDF, JSONL
    hits = await kb.search("support", "how do I delete my account?", top_k=4)

Modules, in the order data flows:

    parsers.py    file → documents, each a list of sections (heading path or page + text)
    chunking.py   sections → chunks within a token budget, with overlap, never mid-word
    files.py      files and folders → parsed documents, with content hashes for incremental runs
    records.py    the SQL: collections, documents, chunks, and each collection's version
    fulltext.py   SQLite FTS5 (bm25) or PostgreSQL full-text (ts_rank_cd)
    vectors.py    the VectorIndex protocol and the exact numpy index, cached per version
    ann.py        the optional approximate index (usearch HNSW) and the choice of index
    fusion.py     convex (default) and reciprocal rank fusion of ranked lists
    search.py     searching: both rankings and their fusion, from a query to hits
    ingest.py     writing: ingest, add, remove and drop, safe under concurrent writers
    knowledge.py  the `KnowledgeBase` facade that the grounding layer, CLI and HTTP API call

Every collection records the embedder it was built with (name, fingerprint, dimension); a
search embeds the query with that same embedder and refuses if its fingerprint has changed.
"""

from keel.grounding.knowledge.base import (
    CollectionNotFound,
    Document,
    EmbedderMismatch,
    Hit,
    IngestReport,
)
from keel.grounding.knowledge.knowledge import KnowledgeBase, knowledge_base

__all__ = [
    "CollectionNotFound",
    "Document",
    "EmbedderMismatch",
    "Hit",
    "IngestReport",
    "KnowledgeBase",
    "knowledge_base",
]
