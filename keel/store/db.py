"""Opening the store: the engine for a URL (SQLite or PostgreSQL) and migration to head.

SQLite connections run in WAL mode with synchronous=NORMAL and a busy timeout, so the trace
writer and a reader (`keel traces list`) never block each other and a second writer waits
instead of failing. PostgreSQL goes through psycopg v3; a plain `postgresql://` URL is accepted.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from keel.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Store:
    """An open database: the engine, and what kind of database it is."""

    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name  # "sqlite" or "postgresql"

    @property
    def url(self) -> str:
        """The URL with any password hidden, safe to print."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()


def open_store(url: str | URL, *, migrate: bool = True) -> Store:
    """Open the database at `url` and, unless told not to, bring its schema to the latest."""
    engine = create_engine(url)
    store = Store(engine)
    if migrate:
        from keel.store.migrate import upgrade_to_head

        upgrade_to_head(engine)
    return store


def create_engine(url: str | URL) -> Engine:
    url = normalize_url(url)
    options: dict[str, Any] = {
        "json_serializer": dumps_json,
        "json_deserializer": orjson.loads,
    }
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, options)
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True, **options)
    return sa.create_engine(url, **options)


def normalize_url(url: str | URL) -> URL:
    try:
        url = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"store.url: not a database URL: {exc}") from None
    # postgres:// is what many hosting providers hand out; both mean psycopg v3 here.
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL; None for other databases or an in-memory one."""
    url = normalize_url(url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def dumps_json(value: Any) -> str:
    return orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS).decode()


def _jsonable(value: Any) -> Any:
    # Bodies are mostly plain dicts; this catches msgspec structs, pydantic models, bytes, sets.
    if hasattr(value, "__struct_fields__"):
        import msgspec

        return msgspec.to_builtins(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def _sqlite_engine(url: URL, options: dict[str, Any]) -> Engine:
    path = sqlite_path(url)
    if path is None:
        # One shared connection, or each thread (the trace writer) would see its own empty DB.
        options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when a transaction begins (see _on_begin).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if path is not None:
            _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        options = conn.get_execution_options()
        # A caller with its own retry (the trace writer) waits less for a lock than the
        # default; the connection gets the default back when it returns to the pool.
        busy_ms = options.get("sqlite_busy_timeout_ms")
        if busy_ms is not None:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
            conn.info["keel_busy_timeout_changed"] = True
        # IMMEDIATE takes the write lock up front: two processes migrating at once then queue
        # on busy_timeout instead of one failing with "database is locked" on its first write.
        immediate = options.get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn, record) -> None:
        if record.info.pop("keel_busy_timeout_changed", False) and dbapi_conn is not None:
            dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")

    return engine


def _enable_wal(cursor) -> None:
    # WAL is a property of the file, set once. Switching a fresh file to it takes a lock that
    # busy_timeout does not wait for, so a second process starting at that instant retries here.
    for attempt in range(100):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01 + 0.002 * attempt)


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
