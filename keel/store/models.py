"""The tables, as SQLAlchemy Core, portable across SQLite and PostgreSQL.

This is the schema the code reads and writes; the migrations in `migrations/versions/` are what
create it. Change both together: add a new named migration, never edit an applied one.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# JSON columns store a Python None as SQL NULL (not the JSON text 'null'), so "no body" is NULL.
Json = sa.JSON(none_as_null=True)

traces = sa.Table(
    "traces",
    metadata,
    # Time-ordered hex id (see keel.pipeline.trace.new_trace_id), so id order is creation order.
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
    sa.Column("request", Json),
    sa.Column("response", Json),
    sa.Column("error", Json),
    sa.Column("spans", Json),
    sa.Index("ix_traces_created_at", "created_at"),
    sa.Index("ix_traces_model", "model"),
)
