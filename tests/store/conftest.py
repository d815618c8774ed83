"""Store tests run on SQLite and, when configured, on PostgreSQL."""

from tests.store.backends import db_url, store  # noqa: F401  (fixtures)
