"""Migration 0002: the knowledge tables match the models, with each dialect's full-text index."""

from __future__ import annotations

import sqlalchemy as sa

from keel.store import open_store
from keel.store.models import (
    knowledge_chunks,
    knowledge_collections,
    knowledge_documents,
)


def test_migrated_tables_match_the_models(db_url):
    store = open_store(db_url)
    try:
        inspector = sa.inspect(store.engine)
        for table in (knowledge_collections, knowledge_documents, knowledge_chunks):
            migrated = {c["name"] for c in inspector.get_columns(table.name)}
            # PostgreSQL's generated tsvector column lives only in the migration.
            assert migrated - {"tsv"} == {c.name for c in table.c}
        if store.dialect == "sqlite":
            assert "knowledge_fts" in inspector.get_table_names()
        else:
            indexes = {ix["name"] for ix in inspector.get_indexes("knowledge_chunks")}
            assert "ix_knowledge_chunks_tsv" in indexes
    finally:
        store.close()
