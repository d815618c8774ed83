"""0007: distillation — training sets, training jobs and promotions, with their lineage."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_distill"
down_revision = "0006_cache"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "distill_sets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("source", Json, nullable=False),
        sa.Column("splits", Json, nullable=False),
        sa.Column("stats", Json),
    )
    op.create_index("ix_distill_sets_name", "distill_sets", ["name", "created_at"])
    op.create_table(
        "distill_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("set_id", sa.String(32)),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("base_model", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(200)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.Column("options", Json),
        sa.Column("events", Json),
        sa.Column("result_model", sa.String(500)),
        sa.Column("error", Json),
    )
    op.create_index("ix_distill_jobs_created_at", "distill_jobs", ["created_at"])
    op.create_table(
        "distill_promotions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32)),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("share", sa.Double),
        sa.Column("eval_run_id", sa.String(32)),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("note", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("distill_promotions")
    op.drop_index("ix_distill_jobs_created_at", table_name="distill_jobs")
    op.drop_table("distill_jobs")
    op.drop_index("ix_distill_sets_name", table_name="distill_sets")
    op.drop_table("distill_sets")
