"""Feedback on traces: a person's score, comment and correction for one answer the gateway gave.

    add_feedback(store, trace_id, score, ...)    validate and store; the caller checks the trace
    feedback_for(store, trace_id)                 oldest first
    traces_for_dataset(store, feedback=..., ...)  traces (with their latest feedback) chosen by
                                                  a filter, for `keel eval dataset from-traces`

A score is on one of two scales, named by `scale` or read from the score: `thumbs` (+1 / -1)
or `rating` (1-5). Without a scale, -1 and +1 are thumbs and 2-5 ratings, so a rating of 1 must
say `scale: rating` to be read as the bottom of the scale rather than a thumbs up. `sentiment`
sorts scores into down (thumbs -1, rating 1-2), neutral (rating 3) and up (+1, rating 4-5).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.store.models import feedback as feedback_table
from keel.store.models import traces

if TYPE_CHECKING:
    from keel.store import Store

SCALES = {"thumbs": (-1, 1), "rating": (1, 2, 3, 4, 5)}
SENTIMENTS = {
    "thumbs": {-1: "down", 1: "up"},
    "rating": {1: "down", 2: "down", 3: "neutral", 4: "up", 5: "up"},
}
TRACE_ID_MAX = 32


class TraceNotFound(NotFound):
    code = "trace_not_found"


def check_scale(scale: Any) -> str | None:
    if scale is not None and (not isinstance(scale, str) or scale not in SCALES):
        raise InvalidRequest(f"scale: expected thumbs or rating, got {scale!r}", param="scale")
    return scale


def check_score(score: Any, scale: str | None = None) -> tuple[int, str]:
    """The score as an int and the scale it is on, or a 400 naming `score`."""
    integral = isinstance(score, int) or (isinstance(score, float) and score.is_integer())
    value = int(score) if integral and not isinstance(score, bool) else None
    scale = check_scale(scale) or _scale_of(value)
    if value is None or scale is None or value not in SCALES[scale]:
        expected = {"thumbs": "+1 or -1", "rating": "an integer from 1 to 5"}.get(
            scale, "+1 or -1 (thumbs) or an integer from 1 to 5 (rating)")
        on = f" on the {scale} scale" if scale else ""
        raise InvalidRequest(f"score: expected {expected}{on}, got {score!r}", param="score")
    return value, scale


def _scale_of(value: int | None) -> str | None:
    if value in (-1, 1):
        return "thumbs"
    if value in SCALES["rating"]:
        return "rating"
    return None


def sentiment(score: float, scale: str | None = None) -> str:
    value = int(score)
    return SENTIMENTS[scale or _scale_of(value) or "rating"].get(value, "neutral")


def trace_exists(store: Store, trace_id: str) -> bool:
    if not isinstance(trace_id, str) or not trace_id or len(trace_id) > TRACE_ID_MAX:
        return False
    query = sa.select(traces.c.id).where(traces.c.id == trace_id)
    with store.engine.connect() as conn:
        return conn.execute(query).first() is not None


def add_feedback(
    store: Store,
    trace_id: str,
    score: Any,
    comment: str | None = None,
    correction: str | None = None,
    metadata: dict | None = None,
    scale: str | None = None,
) -> dict[str, Any]:
    """Store one piece of feedback and return it as the API shows it."""
    value, scale = check_score(score, scale)
    row = {
        "trace_id": trace_id,
        "score": float(value),
        "scale": scale,
        "comment": comment,
        "correction": correction,
        "metadata": metadata or None,
        "created_at": time.time(),
    }
    with store.engine.begin() as conn:
        row["id"] = conn.execute(feedback_table.insert().values(**row)).inserted_primary_key[0]
    return to_api(row)


def feedback_for(store: Store, trace_id: str) -> list[dict[str, Any]]:
    query = (sa.select(feedback_table).where(feedback_table.c.trace_id == trace_id)
             .order_by(feedback_table.c.created_at, feedback_table.c.id))
    with store.engine.connect() as conn:
        return [to_api(row) for row in conn.execute(query).mappings().all()]


def to_api(row) -> dict[str, Any]:
    score = row["score"]
    return {
        "id": row["id"],
        "object": "feedback",
        "trace_id": row["trace_id"],
        "score": int(score) if float(score).is_integer() else score,
        "scale": row.get("scale") or _scale_of(int(score)),
        "comment": row["comment"],
        "correction": row["correction"],
        "metadata": row["metadata"],
        "created_at": int(row["created_at"]),
    }


# -- choosing traces for a dataset -----------------------------------------------------------


def traces_for_dataset(
    store: Store,
    *,
    feedback: str | None = None,
    model: str | None = None,
    since: float | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Traces newest first, each with `feedback` (its latest, or None) and `correction` (the
    latest correction given, or None).

    `feedback` is "down", "up" or "any" (traces with feedback), judged by the latest feedback of
    each trace; None takes traces with or without. Only traces whose request had chat messages
    can become samples, so others are left out here.
    """
    if feedback not in (None, "down", "up", "any"):
        raise InvalidRequest(f"feedback: expected down, up or any, got {feedback!r}",
                             param="feedback")
    by_score = min_score is not None or max_score is not None
    query = sa.select(traces.c.id, traces.c.created_at, traces.c.model, traces.c.request,
                      traces.c.response)
    if model is not None:
        query = query.where(traces.c.model == model)
    if since is not None:
        query = query.where(traces.c.created_at >= since)
    if feedback is not None or by_score:
        query = query.where(traces.c.id.in_(sa.select(feedback_table.c.trace_id)))
    query = query.order_by(traces.c.created_at.desc(), traces.c.id.desc())
    chosen: list[dict[str, Any]] = []
    with store.engine.connect() as conn:
        # Pages, because the feedback filter runs here on each trace's latest feedback.
        for page in _pages(conn, query):
            latest = _latest_feedback(conn, [row["id"] for row in page])
            for row in page:
                entry = {**{str(k): v for k, v in row.items()}, **latest.get(row["id"], {})}
                entry.setdefault("feedback", None)
                entry.setdefault("correction", None)
                if _has_messages(entry) and _wanted(entry["feedback"], feedback,
                                                     min_score, max_score):
                    chosen.append(entry)
                    if len(chosen) >= limit:
                        return chosen
    return chosen


def _pages(conn, query, size: int = 500):
    # Keyset paging: new traces arriving meanwhile cannot shift a page onto rows already seen.
    page = conn.execute(query.limit(size)).mappings().all()
    while page:
        yield page
        last = page[-1]
        page = conn.execute(query.where(sa.or_(
            traces.c.created_at < last["created_at"],
            sa.and_(traces.c.created_at == last["created_at"], traces.c.id < last["id"]),
        )).limit(size)).mappings().all()


def _latest_feedback(conn, trace_ids: list[str]) -> dict[str, dict]:
    query = (sa.select(feedback_table).where(feedback_table.c.trace_id.in_(trace_ids))
             .order_by(feedback_table.c.created_at, feedback_table.c.id))
    latest: dict[str, dict] = {}
    for row in conn.execute(query).mappings().all():
        entry = latest.setdefault(row["trace_id"], {"correction": None})
        entry["feedback"] = to_api(row)
        if row["correction"]:
            entry["correction"] = row["correction"]
    return latest


def _wanted(latest: dict | None, feedback: str | None, min_score, max_score) -> bool:
    if feedback is not None:
        if latest is None:
            return False
        if feedback != "any" and sentiment(latest["score"], latest["scale"]) != feedback:
            return False
    if min_score is not None or max_score is not None:
        if latest is None:
            return False
        if min_score is not None and latest["score"] < min_score:
            return False
        if max_score is not None and latest["score"] > max_score:
            return False
    return True


def _has_messages(entry: dict) -> bool:
    request = entry.get("request")
    return isinstance(request, dict) and isinstance(request.get("messages"), list) \
        and bool(request["messages"])


def require_trace(store: Store, trace_id: str) -> None:
    if not trace_exists(store, trace_id):
        raise TraceNotFound(f"No trace with id {trace_id!r}.", param="trace_id")
