"""Alembic environment for Keel's store.

Migrations run from code (`keel.store.migrate.upgrade_to_head`), which hands over an open
connection already inside a locked transaction. To add a migration, copy the latest file in
`versions/` to `NNNN_what_it_does.py`, set `revision` to that stem and `down_revision` to the
previous one, and mirror the change in `keel/store/models.py`.
"""

from __future__ import annotations

from alembic import context

from keel.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run Keel's migrations through keel.store.migrate.upgrade_to_head")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
