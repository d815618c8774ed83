"""0002: the knowledge store: collections, their documents, and chunks with embeddings.

Full-text search is per dialect: on SQLite an FTS5 table over the chunks' text (external
content, kept in step by triggers, Porter stemming); on PostgreSQL a generated tsvector column
with a GIN index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_knowledge"
down_revision = "0001_traces"
branch_labels = None
depends_on = None

_SQLITE_FTS = [
    """CREATE VIRTUAL TABLE knowledge_fts USING fts5(
        text, content='knowledge_chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER knowledge_chunks_ai AFTER INSERT ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts(rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER knowledge_chunks_ad AFTER DELETE ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts(knowledge_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    """CREATE TRIGGER knowledge_chunks_au AFTER UPDATE OF text ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts(knowledge_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO knowledge_fts(rowid, text) VALUES (new.id, new.text);
    END""",
]

_POSTGRES_FTS = [
    """ALTER TABLE knowledge_chunks ADD COLUMN tsv tsvector
        GENERATED ALWAYS AS (to_tsvector('english', text)) STORED""",
    "CREATE INDEX ix_knowledge_chunks_tsv ON knowledge_chunks USING gin (tsv)",
]


def upgrade() -> None:
    json = sa.JSON(none_as_null=True)
    op.create_table(
        "knowledge_collections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("embedder", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "knowledge_documents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "collection_id", sa.Integer,
            sa.ForeignKey("knowledge_collections.id", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column("doc_id", sa.String(1000), nullable=False),
        sa.Column("source", sa.String(1000)),
        sa.Column("title", sa.String(1000)),
        sa.Column("path", sa.String(1000)),
        sa.Column("file_hash", sa.String(64)),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("metadata", json),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.UniqueConstraint("collection_id", "doc_id", name="uq_knowledge_documents_doc"),
    )
    op.create_index(
        "ix_knowledge_documents_path", "knowledge_documents", ["collection_id", "path"]
    )
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "collection_id", sa.Integer,
            sa.ForeignKey("knowledge_collections.id", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column(
            "document_id", sa.Integer,
            sa.ForeignKey("knowledge_documents.id", ondelete="CASCADE"), nullable=False,
        ),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("location", sa.String(1000)),
        sa.Column("tokens", sa.Integer),
        sa.Column("metadata", json),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_knowledge_chunks_collection", "knowledge_chunks", ["collection_id"])
    op.create_index("ix_knowledge_chunks_document", "knowledge_chunks", ["document_id"])
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": _SQLITE_FTS, "postgresql": _POSTGRES_FTS}.get(dialect, [])
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    op.drop_table("knowledge_chunks")
    op.drop_table("knowledge_documents")
    op.drop_table("knowledge_collections")
