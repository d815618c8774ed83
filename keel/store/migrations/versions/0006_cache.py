"""0006: the answer cache — exact and semantic entries (keel.orchestration.cache)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_cache"
down_revision = "0005_llmops"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("query", sa.Text),
        sa.Column("embedder", sa.String(200)),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("response", Json, nullable=False),
        sa.Column("usage", Json),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("last_hit_at", sa.Double),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sqlite_autoincrement=True,  # ids are never reused: replicas' indexes hold them
    )
    op.create_index("ix_cache_entries_key", "cache_entries", ["model", "key_hash"])
    op.create_index("ix_cache_entries_namespace", "cache_entries", ["namespace", "created_at"])
    op.create_index("ix_cache_entries_expires_at", "cache_entries", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_cache_entries_expires_at", table_name="cache_entries")
    op.drop_index("ix_cache_entries_namespace", table_name="cache_entries")
    op.drop_index("ix_cache_entries_key", table_name="cache_entries")
    op.drop_table("cache_entries")
