"""0001: the traces table, one row per request the gateway served."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_traces"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    json = sa.JSON(none_as_null=True)
    op.create_table(
        "traces",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Double, nullable=False, comment="epoch seconds"),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), comment="the public model name the client asked for"),
        sa.Column("provider", sa.String(200)),
        sa.Column("upstream_model", sa.String(200)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("latency_ms", sa.Double),
        sa.Column("ttft_ms", sa.Double),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("total_tokens", sa.Integer),
        sa.Column("system_fingerprint", sa.String(200)),
        sa.Column("request", json),
        sa.Column("response", json),
        sa.Column("error", json),
        sa.Column("spans", json),
    )
    op.create_index("ix_traces_created_at", "traces", ["created_at"])
    op.create_index("ix_traces_model", "traces", ["model"])


def downgrade() -> None:
    op.drop_index("ix_traces_model", table_name="traces")
    op.drop_index("ix_traces_created_at", table_name="traces")
    op.drop_table("traces")
