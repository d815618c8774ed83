"""Lineage of distillation in the store: training sets, training jobs and promotions.

Synchronous (SQLAlchemy Core) like the other store modules: async callers use
`asyncio.to_thread`. Ids are time-ordered hex strings, as traces and eval runs have.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.pipeline.trace import new_trace_id
from keel.store import Store
from keel.store.models import distill_jobs, distill_promotions, distill_sets

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
PROMOTION_MODES = ("shadow", "canary", "router")


class SetNotFound(NotFound):
    code = "distill_set_not_found"


class JobNotFound(NotFound):
    code = "distill_job_not_found"


def create_set(store: Store, *, name: str, source: dict, splits: dict,
               stats: dict | None = None) -> str:
    set_id = new_trace_id()
    with store.engine.begin() as conn:
        conn.execute(distill_sets.insert().values(
            id=set_id, name=name, created_at=time.time(), source=source, splits=splits,
            stats=stats))
    return set_id


def get_set(store: Store, set_id: str) -> dict[str, Any]:
    """A training set by id, id prefix, or name (its newest)."""
    with store.engine.connect() as conn:
        row = _one(conn, distill_sets, set_id, by_name=True)
    if row is None:
        raise SetNotFound(f"no distillation set {set_id!r} (see `keel distill list`)")
    return row


def list_sets(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    query = sa.select(distill_sets).order_by(distill_sets.c.created_at.desc()).limit(limit)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def create_job(store: Store, *, backend: str, base_model: str, set_id: str | None,
               options: dict | None = None) -> str:
    job_id = new_trace_id()
    with store.engine.begin() as conn:
        conn.execute(distill_jobs.insert().values(
            id=job_id, set_id=set_id, backend=backend, base_model=base_model, status="queued",
            created_at=time.time(), options=options or {}, events=[]))
    return job_id


def update_job(store: Store, job_id: str, **fields: Any) -> None:
    """Set a job's fields (status, external_id, events, result_model, error); a final status
    stamps `finished_at`."""
    unknown = set(fields) - {"status", "external_id", "events", "result_model", "error",
                             "options"}
    if unknown:
        raise InvalidRequest(f"update_job: unknown fields {sorted(unknown)}")
    if "status" in fields:
        if fields["status"] not in JOB_STATES:
            raise InvalidRequest(f"status: expected one of {', '.join(JOB_STATES)}")
        if fields["status"] in FINAL_STATES:
            fields["finished_at"] = time.time()
    with store.engine.begin() as conn:
        conn.execute(distill_jobs.update().where(distill_jobs.c.id == job_id).values(**fields))


def get_job(store: Store, job_id: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        row = _one(conn, distill_jobs, job_id)
    if row is None:
        raise JobNotFound(f"no distillation job {job_id!r} (see `keel distill jobs`)")
    return row


def list_jobs(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    query = sa.select(distill_jobs).order_by(distill_jobs.c.created_at.desc()).limit(limit)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def add_promotion(store: Store, *, model: str, route: str, mode: str, job_id: str | None = None,
                  share: float | None = None, eval_run_id: str | None = None,
                  note: str | None = None) -> int:
    if mode not in PROMOTION_MODES:
        raise InvalidRequest(f"mode: expected one of {', '.join(PROMOTION_MODES)}", param="mode")
    with store.engine.begin() as conn:
        return conn.execute(distill_promotions.insert().values(
            job_id=job_id, model=model, route=route, mode=mode, share=share,
            eval_run_id=eval_run_id, created_at=time.time(), note=note,
        )).inserted_primary_key[0]


def promotions(store: Store, route: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(distill_promotions).order_by(distill_promotions.c.created_at)
    if route is not None:
        query = query.where(distill_promotions.c.route == route)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _one(conn, table: sa.Table, key: str, by_name: bool = False) -> dict[str, Any] | None:
    row = conn.execute(sa.select(table).where(table.c.id == key)).mappings().first()
    if row is None and len(key) >= 6:
        found = conn.execute(sa.select(table).where(table.c.id.startswith(key, autoescape=True))
                             .limit(2)).mappings().all()
        if len(found) == 2:
            raise InvalidRequest(f"{key!r} matches several; give more of the id")
        row = found[0] if found else None
    if row is None and by_name:
        row = conn.execute(sa.select(table).where(table.c.name == key)
                           .order_by(table.c.created_at.desc()).limit(1)).mappings().first()
    return dict(row) if row is not None else None
