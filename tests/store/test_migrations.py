"""The schema: created by the migrations on a fresh database, untouched by a rerun."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from keel.store import open_store
from keel.store.db import normalize_url, sqlite_path
from keel.store.migrate import current_revision, head_revision
from keel.store.models import traces

TRACE_COLUMNS = {
    "id", "created_at", "endpoint", "model", "provider", "upstream_model", "stream", "status",
    "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "total_tokens",
    "system_fingerprint", "request", "response", "error", "spans",
    "key_id", "key_metadata", "end_user", "session_id", "cost_usd",
}


def test_fresh_database_gets_the_traces_table_at_head(store):
    inspector = sa.inspect(store.engine)
    assert "traces" in inspector.get_table_names()
    assert {c["name"] for c in inspector.get_columns("traces")} == TRACE_COLUMNS
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("traces")}
    assert {("created_at",), ("model",)} <= indexed
    assert current_revision(store.engine) == head_revision() == "0007_distill"


def test_migrations_match_the_models(store):
    # The code's idea of the table and the migrated one must agree, column for column.
    migrated = {c["name"] for c in sa.inspect(store.engine).get_columns("traces")}
    assert migrated == {c.name for c in traces.c}


def test_rerun_is_idempotent_and_keeps_data(db_url, store):
    with store.engine.begin() as conn:
        conn.execute(traces.insert(), {"id": "a1", "created_at": 1.0, "endpoint": "x",
                                       "stream": False})
    again = open_store(db_url)
    try:
        assert current_revision(again.engine) == head_revision()
        with again.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar() == 1
    finally:
        again.close()


def test_two_processes_starting_at_once_both_succeed(db_url):
    # Separate engines are separate connections, which is what two processes would have.
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(db_url), range(4)))
    try:
        assert all(current_revision(s.engine) == head_revision() for s in stores)
    finally:
        for s in stores:
            s.close()


def test_works_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///relative/dir/keel.db")
    try:
        assert (tmp_path / "relative" / "dir" / "keel.db").exists()
        assert current_revision(store.engine) == head_revision()
    finally:
        store.close()


def test_sqlite_runs_in_wal_mode_with_normal_sync(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'a' / 'b' / 'keel.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        store.close()


def test_in_memory_sqlite_is_shared_across_threads():
    store = open_store("sqlite://")
    try:
        with ThreadPoolExecutor(1) as pool:
            names = pool.submit(lambda: sa.inspect(store.engine).get_table_names()).result()
        assert "traces" in names
    finally:
        store.close()


@pytest.mark.parametrize("url", ["postgresql://u:p@h/db", "postgres://u:p@h/db",
                                 "postgresql+psycopg://u:p@h/db"])
def test_postgres_urls_use_psycopg3(url):
    assert normalize_url(url).drivername == "postgresql+psycopg"


def test_store_url_hides_the_password(tmp_path):
    from keel.store.db import Store, create_engine

    store = Store(create_engine("postgresql://keel:secret@127.0.0.1/db"))
    assert "secret" not in store.url and store.dialect == "postgresql"


def test_sqlite_path():
    assert sqlite_path("sqlite:///.keel/keel.db").as_posix() == ".keel/keel.db"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql://u@h/db") is None
