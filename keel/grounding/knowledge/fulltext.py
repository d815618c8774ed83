"""Full-text search: SQLite FTS5 ranked by bm25, or PostgreSQL tsvector ranked by ts_rank_cd.

User text never reaches either query language raw. The query is cut into words, each word is
quoted, and the words are OR-ed: a question ("what's C++ used for?") then matches the passages
that share its rarest words first, instead of failing on punctuation or requiring every word.
Scores are "higher is better" on both: FTS5's bm25() is negated.

Common English stop words are left out of the SQLite query (PostgreSQL's `english` config
drops them itself): they add little to bm25 but match most rows, which made a question take
~170 ms at 100k chunks instead of a few ms. A query made only of stop words keeps them.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from keel.grounding.knowledge.records import filter_clauses
from keel.store.models import knowledge_chunks as chunks

_WORD = re.compile(r"\w+", re.UNICODE)
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own s same she should so some such t than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves
""".split())


def query_terms(query: str) -> list[str]:
    """The distinct words of a query, in order, lower-cased."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))


def fts5_match(query: str) -> str | None:
    """A safe FTS5 MATCH expression: every word a quoted string, OR-ed; None if no words."""
    terms = query_terms(query)
    terms = [t for t in terms if t not in STOP_WORDS] or terms
    # \w+ never contains a double quote, so quoting cannot be broken out of.
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def search(
    conn: Connection, collection_id: int, query: str, limit: int,
    filters: dict[str, Any] | None = None,
) -> list[tuple[int, float]]:
    """(chunk id, score) best first."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return _postgres(conn, collection_id, query, limit, filters)
    if dialect == "sqlite":
        return _sqlite(conn, collection_id, query, limit, filters)
    raise NotImplementedError(f"full-text search on {dialect}")


def _sqlite(conn, collection_id, query, limit, filters) -> list[tuple[int, float]]:
    match = fts5_match(query)
    if match is None:
        return []
    fts = sa.table("knowledge_fts", sa.column("rowid"))
    fts_name = sa.literal_column("knowledge_fts")
    rank = sa.func.bm25(fts_name).label("rank")
    rows = conn.execute(
        sa.select(chunks.c.id, rank)
        .select_from(fts.join(chunks, chunks.c.id == fts.c.rowid))
        .where(fts_name.op("MATCH")(match), chunks.c.collection_id == collection_id,
               *filter_clauses("sqlite", filters))
        .order_by(rank)
        .limit(limit)
    ).all()
    return [(row[0], -float(row[1])) for row in rows]


def _postgres(conn, collection_id, query, limit, filters) -> list[tuple[int, float]]:
    terms = query_terms(query)
    if not terms:
        return []
    # websearch_to_tsquery never raises on odd input; "a or b" gives a | b, with stemming
    # and English stop words dropped.
    tsquery = sa.func.websearch_to_tsquery(sa.literal_column("'english'"), " or ".join(terms))
    tsv = sa.literal_column("knowledge_chunks.tsv")
    rank = sa.func.ts_rank_cd(tsv, tsquery).label("rank")
    rows = conn.execute(
        sa.select(chunks.c.id, rank)
        .where(chunks.c.collection_id == collection_id, tsv.op("@@")(tsquery),
               *filter_clauses("postgresql", filters))
        .order_by(rank.desc())
        .limit(limit)
    ).all()
    return [(row[0], float(row[1])) for row in rows]
