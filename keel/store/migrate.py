"""Running the Alembic migrations to head from code, from any working directory.

The Alembic config is built here, pointing at the `migrations/` folder next to this file, so it
works from a checkout and from an installed wheel alike, with no alembic.ini. Two processes that
start at once do not race: the upgrade runs inside a transaction holding a database-wide lock
(PostgreSQL advisory lock; SQLite `BEGIN IMMEDIATE`), and the second one finds the schema at head.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from keel.store.db import MIGRATIONS_DIR, advisory_lock_key

_LOCK_KEY = advisory_lock_key("keel.store.migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    # configparser interpolation would read a '%' in the path as a placeholder.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(engine: Engine) -> None:
    head = head_revision()
    if current_revision(engine) == head:  # the common case: no lock, no DDL
        return
    with engine.connect().execution_options(sqlite_immediate=True) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
            command.upgrade(alembic_config(conn), "head")
