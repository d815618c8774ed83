"""0003: evaluations (datasets, samples, runs, per-sample results, human annotations) and
feedback on traces."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_evals"
down_revision = "0002_knowledge"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "eval_datasets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("sample_count", sa.Integer, nullable=False),
        sa.Column("source", sa.String(1000)),
        sa.UniqueConstraint("name", "version", name="uq_eval_datasets_version"),
    )
    op.create_table(
        "eval_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.Integer,
                  sa.ForeignKey("eval_datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sample_id", sa.String(200), nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("input", Json, nullable=False),
        sa.Column("ideal", Json),
        sa.Column("context", Json),
        sa.Column("metadata", Json),
        sa.UniqueConstraint("dataset_id", "sample_id", name="uq_eval_samples_sample"),
    )
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.Column("suite", sa.String(200), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("dataset_name", sa.String(200), nullable=False),
        sa.Column("dataset_version", sa.String(64), nullable=False),
        sa.Column("config", Json, nullable=False),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("keel_version", sa.String(32), nullable=False),
        sa.Column("summary", Json),
    )
    op.create_index("ix_eval_runs_created_at", "eval_runs", ["created_at"])
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("variant", sa.String(200), nullable=False),
        sa.Column("sample_id", sa.String(200), nullable=False),
        sa.Column("repeat", sa.Integer, nullable=False),
        sa.Column("output", Json),
        sa.Column("error", Json),
        sa.Column("latency_ms", sa.Double),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost_usd", sa.Double),
        sa.Column("system_fingerprint", sa.String(200)),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("grades", Json),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.UniqueConstraint("run_id", "variant", "sample_id", "repeat",
                            name="uq_eval_results_cell"),
    )
    op.create_table(
        "eval_annotations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), sa.ForeignKey("eval_runs.id", ondelete="CASCADE")),
        sa.Column("dataset_id", sa.Integer,
                  sa.ForeignKey("eval_datasets.id", ondelete="CASCADE")),
        sa.Column("variant", sa.String(200)),
        sa.Column("sample_id", sa.String(200), nullable=False),
        sa.Column("repeat", sa.Integer),
        sa.Column("label", sa.String(200)),
        sa.Column("score", sa.Double),
        sa.Column("ideal", Json),
        sa.Column("comment", sa.Text),
        sa.Column("annotator", sa.String(200)),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_eval_annotations_run", "eval_annotations", ["run_id", "sample_id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("correction", sa.Text),
        sa.Column("metadata", Json),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_feedback_trace_id", "feedback", ["trace_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_trace_id", "feedback")
    op.drop_table("feedback")
    op.drop_index("ix_eval_annotations_run", "eval_annotations")
    op.drop_table("eval_annotations")
    op.drop_table("eval_results")
    op.drop_index("ix_eval_runs_created_at", "eval_runs")
    op.drop_table("eval_runs")
    op.drop_table("eval_samples")
    op.drop_table("eval_datasets")
