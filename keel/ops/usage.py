"""Usage accounting: spend, tokens and requests per UTC day, key, team and model.

The trace writer (keel.ops.traces) rolls each batch of trace rows up into `usage_daily` in the
same transaction as the batch itself (`UsageRollup.write`), so the usage table and the traces
never disagree, and usage outlives trace retention. Reading it back:

- `spend_this_period(store, now)`: spend per key and team for today and this month, which
  `Limiter.start` seeds the budgets' counters with;
- `usage_report(store, ...)`: what `keel usage` prints.

The rollup runs on the writer thread, which holds the GIL while it runs Python: it aggregates
the batch first (a dictionary per batch, a few hundred nanoseconds a row) and then writes one
upsert per distinct (day, key, team, model), with one executemany.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from keel.store.models import api_keys, usage_daily

if TYPE_CHECKING:
    from keel.store import Store

_FIELDS = ("created_at", "key_id", "key_metadata", "model", "status", "prompt_tokens",
           "completion_tokens", "cost_usd")
DIMENSIONS = ("day", "key", "team", "model")


class UsageRollup:
    """Turns a batch of trace rows (the driver's parameters: tuples or dicts, in the order of
    `keys`) into `usage_daily` upserts."""

    def __init__(self, dialect: sa.engine.Dialect, keys: list[str], positional: bool) -> None:
        self.index = {name: keys.index(name) if positional else name for name in _FIELDS}
        self.statement = upsert(dialect)
        self._days: dict[int, str] = {}
        self._teams: dict[Any, str] = {}

    def aggregate(self, rows: list) -> list[dict]:
        ix = self.index
        i_at, i_key, i_meta, i_model = ix["created_at"], ix["key_id"], ix["key_metadata"], \
            ix["model"]
        i_status, i_in, i_out, i_cost = ix["status"], ix["prompt_tokens"], \
            ix["completion_tokens"], ix["cost_usd"]
        days, teams = self._days, self._teams
        totals: dict[tuple, list] = {}
        for row in rows:
            at = int(row[i_at] // 86400)
            day = days.get(at)
            if day is None:
                day = days[at] = time.strftime("%Y-%m-%d", time.gmtime(at * 86400))
            meta = row[i_meta]
            team = teams.get(meta) if meta is not None else ""
            if team is None:
                team = teams[meta] = _team(meta)
                if len(teams) > 10000:  # metadata are per key: few; keep it bounded anyway
                    teams.clear()
            group = (day, row[i_key] or "", team, row[i_model] or "")
            total = totals.get(group)
            if total is None:
                total = totals[group] = [0, 0, 0, 0, 0.0]
            status = row[i_status]
            total[0] += 1
            if status is not None and status >= 400:
                total[1] += 1
            total[2] += row[i_in] or 0
            total[3] += row[i_out] or 0
            total[4] += row[i_cost] or 0.0
        return [
            {"day": day, "key_id": key, "team": team, "model": model, "requests": t[0],
             "errors": t[1], "prompt_tokens": t[2], "completion_tokens": t[3], "cost_usd": t[4]}
            for (day, key, team, model), t in totals.items()
        ]

    def write(self, conn: sa.Connection, rows: list) -> None:
        """Add a batch of trace rows to usage_daily, on the batch's own connection."""
        if rows:
            conn.execute(self.statement, self.aggregate(rows))


def upsert(dialect: sa.engine.Dialect):
    """INSERT ... ON CONFLICT DO UPDATE adding to the row, in the dialect's own syntax."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"usage accounting on {dialect.name}")
    stmt = insert(usage_daily)
    c, new = usage_daily.c, stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[c.day, c.key_id, c.team, c.model],
        set_={name: c[name] + new[name] for name in
              ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")},
    )


def _team(meta) -> str:
    # The column holds serialised JSON (a str, or bytes from some drivers), or already a dict.
    try:
        value = orjson.loads(meta) if isinstance(meta, (str, bytes)) else meta
    except orjson.JSONDecodeError:
        return ""
    team = value.get("team") if isinstance(value, dict) else None
    return str(team)[:200] if team is not None else ""


# -- reading back ----------------------------------------------------------------------------


def day_of(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def spend_this_period(store: Store, now: float | None = None) -> dict[tuple[str, str, str], float]:
    """{(scope, name, period): US$} for today and this month (UTC), scope "key" or "team"."""
    now = time.time() if now is None else now
    today = day_of(now)
    month_start = today[:8] + "01"
    c = usage_daily.c
    query = (sa.select(c.day, c.key_id, c.team, sa.func.sum(c.cost_usd))
             .where(c.day >= month_start, c.cost_usd > 0)
             .group_by(c.day, c.key_id, c.team))
    spend: dict[tuple[str, str, str], float] = {}
    with store.engine.connect() as conn:
        for day, key_id, team, cost in conn.execute(query):
            for scope, name in (("key", key_id), ("team", team)):
                if not name:
                    continue
                for period in ("month", "day") if day == today else ("month",):
                    where = (scope, name, period)
                    spend[where] = spend.get(where, 0.0) + (cost or 0.0)
    return spend


def usage_report(store: Store, *, since: float | None = None, by: tuple[str, ...] = DIMENSIONS,
                 key_id: str | None = None) -> list[dict]:
    """Requests, errors, tokens and spend grouped by `by` (of day, key, team, model), the
    biggest spend first; `since` in epoch seconds (whole UTC days from its day on)."""
    unknown = set(by) - set(DIMENSIONS)
    if unknown or not by:
        raise ValueError(f"group by any of {', '.join(DIMENSIONS)}, not {sorted(unknown)}")
    c = usage_daily.c
    columns = {"day": c.day, "key": c.key_id, "team": c.team, "model": c.model}
    groups = [columns[name] for name in by]
    selected = list(groups)
    if "key" in by:
        selected.append(sa.func.max(api_keys.c.name).label("key_name"))
    totals = [sa.func.sum(c[name]).label(name) for name in
              ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")]
    query = sa.select(*selected, *totals).group_by(*groups)
    if "key" in by:
        query = query.select_from(
            usage_daily.outerjoin(api_keys, api_keys.c.id == c.key_id))
    if since is not None:
        query = query.where(c.day >= day_of(since))
    if key_id is not None:
        query = query.where(c.key_id == key_id)
    query = query.order_by(sa.desc("cost_usd"), *groups)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    out = []
    for row in rows:
        item = {name: row[columns[name].name] for name in by}
        if "key" in by:
            item["key_name"] = row["key_name"]
        for name in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            item[name] = int(row[name] or 0)
        item["cost_usd"] = float(row["cost_usd"] or 0.0)
        out.append(item)
    return out
