"""Database fixtures shared by the store and ops tests: every test runs on each backend.

SQLite always (a file in tmp_path); PostgreSQL when KEEL_TEST_POSTGRES_URL names one (see
.ci/postgres.sh). Each PostgreSQL test gets a schema of its own, named in the URL's
search_path, so tests see a fresh database and leave nothing behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from keel.store import open_store
from keel.store.db import normalize_url

POSTGRES_URL = os.environ.get("KEEL_TEST_POSTGRES_URL")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="KEEL_TEST_POSTGRES_URL is not set"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'keel.db'}"
        return
    with postgres_schema_url() as url:
        yield url


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL of the test PostgreSQL whose search path is a fresh schema, dropped afterwards."""
    schema = f"keel_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    # A transaction left open by a failed test would block the DROP below for ever: the server
    # ends such a session after a minute, and the DROP gives up after two, failing clearly.
    options = f"-csearch_path={schema} -cidle_in_transaction_session_timeout=60s"
    try:
        yield f"{POSTGRES_URL}{separator}options={quote(options)}"
    finally:
        try:
            with admin.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '120s'")
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        except sa.exc.OperationalError as exc:
            pytest.fail(f"could not drop test schema {schema}: a connection still holds it "
                        f"({exc})")
        finally:
            admin.dispose()


@pytest.fixture
def store(db_url):
    store = open_store(db_url)
    yield store
    store.close()
