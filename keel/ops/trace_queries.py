"""Reading traces back: a filtered, newest-first list of summaries, and one trace in full.

Both return plain dicts (JSON-able), shaped like the `traces` table, for the CLI, the console
and any script. `list_traces` pages by keyset (`before`, the last row's `cursor(row)`), so
traces arriving meanwhile cannot shift a page onto rows already shown.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.store.db import dumps_json
from keel.store.models import feedback as feedback_table
from keel.store.models import traces

if TYPE_CHECKING:
    from keel.store import Store

# The columns a list shows; bodies and spans can be large, so only `get_trace` reads them.
SUMMARY_COLUMNS = [
    c for c in traces.c if c.name not in ("request", "response", "spans")
]
_ID_PREFIX = re.compile(r"[0-9A-Za-z-]+")
FEEDBACK_FILTERS = ("any", "up", "down", "none")
TEXT_MAX = 200


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
    provider: str | None = None,
    feedback: str | None = None,
    text: str | None = None,
    before: tuple[float, str] | None = None,
) -> list[dict[str, Any]]:
    """The newest traces first.

    `status` is an HTTP status (200, "429") or a class: "ok" (below 400) or "error" (400 and up).
    `since` and `until` (epoch seconds or datetimes) bound when the request arrived: from
    `since`, up to but not including `until`. `key_id` is a virtual key's id, `user` the
    request's `user` field, `session_id` the caller's `x-keel-session-id`; each matches exactly,
    as does `provider` (the provider's name in keel.yaml).

    `feedback` is "any" (has feedback), "none" (has none), or "up" / "down": the sentiment of
    the trace's latest feedback (keel.ops.feedback.sentiment). `text` finds traces whose id
    starts with it or whose request, response or error holds it (case-insensitive, in the
    stored JSON: a scan, fine for a console's page, not an index). `before` is `cursor(row)` of
    the last row of the previous page.
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
    if provider is not None:
        query = query.where(traces.c.provider == provider)
    if feedback is not None:
        query = query.where(_feedback_filter(feedback))
    if text is not None and text.strip():
        query = query.where(_text_filter(text.strip()))
    if before is not None:
        created_at, trace_id = before
        query = query.where(sa.or_(
            traces.c.created_at < created_at,
            sa.and_(traces.c.created_at == created_at, traces.c.id < trace_id),
        ))
    with store.engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).mappings().all()
    return [_plain(row) for row in rows]


def cursor(row: dict[str, Any]) -> str:
    """Where a page that ends at `row` continues: pass `parse_cursor(...)` as `before`."""
    return f"{float(row['created_at'])!r}~{row['id']}"


def parse_cursor(value: str) -> tuple[float, str]:
    created_at, sep, trace_id = value.partition("~")
    try:
        if not sep or not _ID_PREFIX.fullmatch(trace_id):
            raise ValueError(value)
        return float(created_at), trace_id
    except ValueError:
        raise InvalidRequest(f"before: not a page cursor: {value!r}", param="before") from None


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


def _feedback_filter(feedback: str) -> sa.ColumnElement[bool]:
    word = str(feedback).strip().lower()
    has_feedback = traces.c.id.in_(sa.select(feedback_table.c.trace_id))
    if word == "any":
        return has_feedback
    if word == "none":
        return ~has_feedback
    if word not in ("up", "down"):
        raise InvalidRequest(
            f"feedback: expected any, up, down or none, got {feedback!r}", param="feedback")
    latest, newer = feedback_table.alias("latest"), feedback_table.alias("newer")
    is_latest = ~sa.exists().where(
        newer.c.trace_id == latest.c.trace_id,
        sa.or_(newer.c.created_at > latest.c.created_at,
               sa.and_(newer.c.created_at == latest.c.created_at, newer.c.id > latest.c.id)),
    )
    score, scale = latest.c.score, latest.c.scale
    # keel.ops.feedback.sentiment in SQL: thumbs -1/+1; ratings 1-2 down, 4-5 up; a score
    # without a scale is thumbs when it is -1 or +1 and a rating otherwise.
    thumbs = sa.or_(scale == "thumbs", sa.and_(scale.is_(None), score.in_((-1.0, 1.0))))
    if word == "up":
        mood = sa.or_(sa.and_(thumbs, score == 1.0), sa.and_(~thumbs, score >= 4.0))
    else:
        mood = sa.or_(sa.and_(thumbs, score == -1.0), sa.and_(~thumbs, score <= 2.0))
    return traces.c.id.in_(sa.select(latest.c.trace_id).where(is_latest, mood))


def _text_filter(text: str) -> sa.ColumnElement[bool]:
    if len(text) > TEXT_MAX:
        raise InvalidRequest(f"text: at most {TEXT_MAX} characters", param="text")
    # As the JSON columns hold it: quotes and newlines escaped, other characters as they are.
    stored = dumps_json(text)[1:-1]
    pattern = "%" + re.sub(r"([\\%_])", r"\\\1", stored) + "%"
    clauses = [sa.cast(column, sa.Text).ilike(pattern, escape="\\")
               for column in (traces.c.request, traces.c.response, traces.c.error)]
    if _ID_PREFIX.fullmatch(text):
        clauses.append(traces.c.id.like(f"{text.lower()}%"))
    return sa.or_(*clauses)


def _epoch(when: float | datetime) -> float:
    return when.timestamp() if isinstance(when, datetime) else float(when)
