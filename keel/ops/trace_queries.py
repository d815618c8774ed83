"""Reading traces back: a filtered, newest-first list of summaries, and one trace in full.

Both return plain dicts (JSON-able), shaped like the `traces` table, for the CLI, the console
and any script.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.store.models import traces

if TYPE_CHECKING:
    from keel.store import Store

# The columns a list shows; bodies and spans can be large, so only `get_trace` reads them.
SUMMARY_COLUMNS = [
    c for c in traces.c if c.name not in ("request", "response", "spans")
]
_ID_PREFIX = re.compile(r"[0-9A-Za-z-]+")


def list_traces(
    store: Store,
    limit: int = 20,
    model: str | None = None,
    status: int | str | None = None,
    since: float | datetime | None = None,
    *,
    until: float | datetime | None = None,
    key_id: str | None = None,
    user: str | None = None,
    session_id: str | None = None,
) -> list[dict[str, Any]]:
    """The newest traces first.

    `status` is an HTTP status (200, "429") or a class: "ok" (below 400) or "error" (400 and up).
    `since` and `until` (epoch seconds or datetimes) bound when the request arrived: from
    `since`, up to but not including `until`. `key_id` is a virtual key's id, `user` the
    request's `user` field, `session_id` the caller's `x-keel-session-id`; each matches exactly.
    """
    query = sa.select(*SUMMARY_COLUMNS).order_by(traces.c.created_at.desc(), traces.c.id.desc())
    if model is not None:
        query = query.where(traces.c.model == model)
    if status is not None:
        query = query.where(_status_filter(status))
    if since is not None:
        query = query.where(traces.c.created_at >= _epoch(since))
    if until is not None:
        query = query.where(traces.c.created_at < _epoch(until))
    if key_id is not None:
        query = query.where(traces.c.key_id == key_id)
    if user is not None:
        query = query.where(traces.c.end_user == user)
    if session_id is not None:
        query = query.where(traces.c.session_id == session_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).mappings().all()
    return [_plain(row) for row in rows]


def get_trace(store: Store, trace_id: str) -> dict[str, Any]:
    """One trace, everything recorded; `trace_id` may be any unique prefix of the id."""
    trace_id = trace_id.strip()
    if not _ID_PREFIX.fullmatch(trace_id):
        raise NotFound(f"no trace {trace_id!r}")
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(traces).where(traces.c.id == trace_id)).mappings().first()
        if row is None:
            # The id alphabet has no LIKE wildcards (checked above), so the prefix is literal.
            matches = conn.execute(
                sa.select(traces).where(traces.c.id.like(f"{trace_id}%")).limit(2)
            ).mappings().all()
            if not matches:
                raise NotFound(f"no trace {trace_id!r}")
            if len(matches) > 1:
                raise InvalidRequest(
                    f"trace id prefix {trace_id!r} is ambiguous; give more characters",
                    param="id",
                )
            row = matches[0]
    return _plain(row)


def _plain(row) -> dict[str, Any]:
    # Column names are SQLAlchemy `quoted_name`s; plain str keys keep the dicts JSON-able anywhere.
    return {str(key): value for key, value in row.items()}


def _status_filter(status: int | str) -> sa.ColumnElement[bool]:
    word = str(status).strip().lower()
    if word == "ok":
        return traces.c.status < 400
    if word in ("error", "err"):
        return sa.or_(traces.c.status >= 400, traces.c.status.is_(None))
    try:
        return traces.c.status == int(word)
    except ValueError:
        raise InvalidRequest(
            f"status: expected an HTTP status, 'ok' or 'error', got {status!r}", param="status"
        ) from None


def _epoch(when: float | datetime) -> float:
    return when.timestamp() if isinstance(when, datetime) else float(when)
