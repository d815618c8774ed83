"""0005: LLMOps — virtual keys, who asked on each trace (key, user, session, cost), and the daily
usage rollup that budgets and `keel usage` read."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_llmops"
down_revision = "0004_feedback_scale"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    with op.batch_alter_table("traces") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("key_metadata", Json, nullable=True))
        batch.add_column(sa.Column("end_user", sa.String(200), nullable=True))
        batch.add_column(sa.Column("session_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Double, nullable=True))
    op.create_index("ix_traces_key_id", "traces", ["key_id", "created_at"])
    op.create_index("ix_traces_session_id", "traces", ["session_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(32), nullable=False),
        sa.Column("models", Json),
        sa.Column("surfaces", Json, nullable=False),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_usd", sa.Double),
        sa.Column("period", sa.String(10)),
        sa.Column("metadata", Json),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("revoked_at", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_api_keys_updated_at", "api_keys", ["updated_at"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "team", "model", name="pk_usage_daily"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_index("ix_api_keys_updated_at", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_traces_session_id", table_name="traces")
    op.drop_index("ix_traces_key_id", table_name="traces")
    with op.batch_alter_table("traces") as batch:
        for column in ("cost_usd", "session_id", "end_user", "key_metadata", "key_id"):
            batch.drop_column(column)
