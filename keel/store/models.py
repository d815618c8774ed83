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
    # Who asked (migration 0005_llmops): the virtual key's id and metadata (never its secret),
    # the end user (`user` field) and the caller's session (`x-keel-session-id`).
    sa.Column("key_id", sa.String(32)),
    sa.Column("key_metadata", Json),
    sa.Column("end_user", sa.String(200), comment="the request's `user` field"),
    sa.Column("session_id", sa.String(200)),
    sa.Column("cost_usd", sa.Double, comment="from the model's pricing; NULL when not priced"),
    sa.Index("ix_traces_created_at", "created_at"),
    sa.Index("ix_traces_model", "model"),
    sa.Index("ix_traces_key_id", "key_id", "created_at"),
    sa.Index("ix_traces_session_id", "session_id"),
)

# -- knowledge store (migration 0002_knowledge) ---------------------------------------------
# Full-text indexes live outside these tables and are created per dialect by the migration:
# SQLite an FTS5 table `knowledge_fts` (external content = knowledge_chunks, kept in step by
# triggers); PostgreSQL a generated `tsv` tsvector column on knowledge_chunks with a GIN index.

knowledge_collections = sa.Table(
    "knowledge_collections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("embedder", sa.String(200), nullable=False, comment="embedder name in keel.yaml"),
    sa.Column("fingerprint", sa.String(200), nullable=False, comment="embedder fingerprint"),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("version", sa.String(64), nullable=False, comment="changes iff content does"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

knowledge_documents = sa.Table(
    "knowledge_documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "collection_id", sa.Integer,
        sa.ForeignKey("knowledge_collections.id", ondelete="CASCADE"), nullable=False,
    ),
    sa.Column("doc_id", sa.String(1000), nullable=False, comment="the id users see"),
    sa.Column("source", sa.String(1000)),
    sa.Column("title", sa.String(1000)),
    sa.Column("path", sa.String(1000), comment="file it was ingested from; NULL if added by API"),
    sa.Column("file_hash", sa.String(64), comment="hash of that file when ingested"),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("metadata", Json),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.UniqueConstraint("collection_id", "doc_id", name="uq_knowledge_documents_doc"),
    sa.Index("ix_knowledge_documents_path", "collection_id", "path"),
)

knowledge_chunks = sa.Table(
    "knowledge_chunks",
    metadata,
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
    sa.Column("metadata", Json),
    sa.Column("embedding", sa.LargeBinary, nullable=False, comment="float32, little-endian"),
    sa.Index("ix_knowledge_chunks_collection", "collection_id"),
    sa.Index("ix_knowledge_chunks_document", "document_id"),
)

# -- evaluations and feedback (migration 0003_evals) ----------------------------------------

eval_datasets = sa.Table(
    "eval_datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.String(64), nullable=False, comment="hash of the samples' content"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("sample_count", sa.Integer, nullable=False),
    sa.Column("source", sa.String(1000), comment="file or filter it was made from"),
    sa.UniqueConstraint("name", "version", name="uq_eval_datasets_version"),
)

eval_samples = sa.Table(
    "eval_samples",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "dataset_id", sa.Integer, sa.ForeignKey("eval_datasets.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("sample_id", sa.String(200), nullable=False),
    sa.Column("ordinal", sa.Integer, nullable=False),
    sa.Column("input", Json, nullable=False, comment="chat messages"),
    sa.Column("ideal", Json),
    sa.Column("context", Json),
    sa.Column("metadata", Json),
    sa.UniqueConstraint("dataset_id", "sample_id", name="uq_eval_samples_sample"),
)

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True, comment="time-ordered, like trace ids"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.Column("suite", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False, comment="running | finished | failed"),
    sa.Column("dataset_name", sa.String(200), nullable=False),
    sa.Column("dataset_version", sa.String(64), nullable=False),
    sa.Column("config", Json, nullable=False,
              comment="the audit: variants (prompt, params, model, fingerprints, retrieval), "
                      "graders, judge model and prompts, repeats"),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("keel_version", sa.String(32), nullable=False),
    sa.Column("summary", Json),
    sa.Index("ix_eval_runs_created_at", "created_at"),
)

eval_results = sa.Table(
    "eval_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("variant", sa.String(200), nullable=False),
    sa.Column("sample_id", sa.String(200), nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("output", Json, comment="the answer text, finish reason, citations, tool runs"),
    sa.Column("error", Json),
    sa.Column("latency_ms", sa.Double),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("cost_usd", sa.Double),
    sa.Column("system_fingerprint", sa.String(200)),
    sa.Column("trace_id", sa.String(32)),
    sa.Column("grades", Json, comment="grader name -> {score, passed, label, reasoning, details}"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("run_id", "variant", "sample_id", "repeat", name="uq_eval_results_cell"),
)

eval_annotations = sa.Table(
    "eval_annotations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(32), sa.ForeignKey("eval_runs.id", ondelete="CASCADE")),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("eval_datasets.id", ondelete="CASCADE")),
    sa.Column("variant", sa.String(200)),
    sa.Column("sample_id", sa.String(200), nullable=False),
    sa.Column("repeat", sa.Integer),
    sa.Column("label", sa.String(200), comment="a human grade: pass/fail, a category, 1-5"),
    sa.Column("score", sa.Double),
    sa.Column("ideal", Json, comment="an ideal answer a person wrote"),
    sa.Column("comment", sa.Text),
    sa.Column("annotator", sa.String(200)),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_eval_annotations_run", "run_id", "sample_id"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trace_id", sa.String(32), nullable=False),
    sa.Column("score", sa.Double, nullable=False, comment="+1/-1, or 1-5"),
    sa.Column("scale", sa.String(10), comment="thumbs or rating (0004); NULL: read from score"),
    sa.Column("comment", sa.Text),
    sa.Column("correction", sa.Text, comment="what the answer should have been"),
    sa.Column("metadata", Json),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_feedback_trace_id", "trace_id"),
)

# -- LLMOps (migration 0005_llmops) ---------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True, comment="key_<hex>: what traces and logs show"),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True,
              comment="sha256 of the secret, hex; the secret itself is shown once, never stored"),
    sa.Column("hint", sa.String(32), nullable=False, comment="sk-keel-…last4, to recognise it"),
    sa.Column("models", Json, comment="allowed public model names; NULL: all"),
    sa.Column("surfaces", Json, nullable=False, comment="allowed surfaces (keel.ops.principal)"),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.Integer),
    sa.Column("budget_usd", sa.Double),
    sa.Column("period", sa.String(10), comment="day | month: the budget's period (UTC)"),
    sa.Column("metadata", Json, comment="free-form labels, e.g. team"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double),
    sa.Column("revoked_at", sa.Double),
    sa.Column("updated_at", sa.Double, nullable=False,
              comment="bumped on every change: replicas poll max(updated_at) to drop cached keys"),
    sa.Index("ix_api_keys_updated_at", "updated_at"),
)

# Spend and tokens per UTC day, key, team and model; written with the traces (same batch), so
# `keel usage` and budgets survive trace retention.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.String(10), nullable=False, comment="YYYY-MM-DD, UTC"),
    sa.Column("key_id", sa.String(32), nullable=False, comment="'' for requests without a key"),
    sa.Column("team", sa.String(200), nullable=False, comment="the key's metadata team, or ''"),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Double, nullable=False),
    sa.PrimaryKeyConstraint("day", "key_id", "team", "model", name="pk_usage_daily"),
)

# -- answer cache (migration 0006_cache) ----------------------------------------------------

cache_entries = sa.Table(
    "cache_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, comment="the public model name"),
    sa.Column("namespace", sa.String(64), nullable=False,
              comment="hash of all but the last user message (keel.orchestration.cache.keys)"),
    sa.Column("kind", sa.String(16), nullable=False,
              comment="exact: key only; semantic: key and embedding (serves both lookups)"),
    sa.Column("key_hash", sa.String(64), nullable=False, comment="the exact key"),
    sa.Column("query", sa.Text, comment="the last user message; NULL for exact-only entries"),
    sa.Column("embedder", sa.String(200), comment="fingerprint of the embedder of `embedding`"),
    sa.Column("embedding", sa.LargeBinary, comment="float32, little-endian, unit length"),
    sa.Column("response", Json, nullable=False, comment="the chat.completion served on a hit"),
    sa.Column("usage", Json, comment="what the answer cost when it was generated"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("last_hit_at", sa.Double),
    sa.Column("hits", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Index("ix_cache_entries_key", "model", "key_hash"),
    sa.Index("ix_cache_entries_namespace", "namespace", "created_at"),
    sa.Index("ix_cache_entries_expires_at", "expires_at"),
    # Ids are never reused (SQLite would reuse the largest after a delete): an id in a
    # replica's in-memory index must never come to name another entry.
    sqlite_autoincrement=True,
)

# -- distillation (migration 0007_distill) -------------------------------------------------

distill_sets = sa.Table(
    "distill_sets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, comment="the training set's name"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("source", Json, nullable=False,
              comment="where the examples came from: trace filters and ids, or teacher + prompts"),
    sa.Column("splits", Json, nullable=False,
              comment="split -> {dataset, version, count}: eval datasets holding each split"),
    sa.Column("stats", Json, comment="counts: found, duplicates, near-duplicates, PII scrubbed"),
    sa.Index("ix_distill_sets_name", "name", "created_at"),
)

distill_jobs = sa.Table(
    "distill_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("set_id", sa.String(32), comment="the distill_sets row it trained on"),
    sa.Column("backend", sa.String(32), nullable=False, comment="openai | local"),
    sa.Column("base_model", sa.String(200), nullable=False),
    sa.Column("external_id", sa.String(200), comment="the backend's own job id"),
    sa.Column("status", sa.String(32), nullable=False,
              comment="queued | running | succeeded | failed | cancelled"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.Column("options", Json, comment="hyperparameters and backend options"),
    sa.Column("events", Json, comment="the backend's events, oldest first"),
    sa.Column("result_model", sa.String(500),
              comment="the trained model: a provider model name or a GGUF path"),
    sa.Column("error", Json),
    sa.Index("ix_distill_jobs_created_at", "created_at"),
)

distill_promotions = sa.Table(
    "distill_promotions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), comment="the distill_jobs row that produced the model"),
    sa.Column("model", sa.String(500), nullable=False),
    sa.Column("route", sa.String(200), nullable=False, comment="the public model it joins"),
    sa.Column("mode", sa.String(16), nullable=False, comment="shadow | canary | router"),
    sa.Column("share", sa.Double, comment="the share of requests (shadow, canary)"),
    sa.Column("eval_run_id", sa.String(32), comment="the eval run that approved it"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("note", sa.Text),
)
