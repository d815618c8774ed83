"""The store: one database behind SQLAlchemy 2, its schema grown by named Alembic migrations.

SQLite (WAL, one file under `state_dir`) by default; PostgreSQL (psycopg v3) when the config's
`store.url` names one. The same tables and the same code run on both.

    from keel.store import open_store
    store = open_store("sqlite:///.keel/keel.db")   # creates the file, migrates to head
    with store.engine.connect() as conn: ...

`models` holds the tables; `migrations/versions/` holds one file per schema change
(`0001_traces.py`, ...), applied in order by `open_store`.
"""

from keel.store.db import Store, open_store
from keel.store.models import metadata, traces

__all__ = ["Store", "metadata", "open_store", "traces"]
