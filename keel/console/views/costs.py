"""Console page: spend, tokens and requests by model, day and key.

    GET /console/costs?days=7|30|90     (default 30)

The figures are `keel usage`'s (keel.ops.usage.usage_report over `usage_daily`, which the trace
writer fills with each batch of traces): the period is whole UTC days, today included. Charts
(uPlot, drawn by static/costs.js from a JSON island) show spend and tokens per model and day;
the tables below them carry the same numbers for keyboards, screen readers and copying.
A model without `pricing:` in keel.yaml costs US$0: its tokens still count.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from typing import Any

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.console.render import render
from keel.console.views.data import error_page
from keel.errors import InvalidRequest
from keel.ops.usage import day_of, usage_report

PERIODS = (7, 30, 90)
DEFAULT_DAYS = 30
DAY_S = 86400
_TOTALS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/costs", costs_page, name="console-costs")


async def costs_page(request: web.Request) -> web.Response:
    raw = request.query.get("days") or str(DEFAULT_DAYS)
    if raw not in {str(p) for p in PERIODS}:
        return error_page(request, InvalidRequest(
            f"days: expected one of {', '.join(map(str, PERIODS))}, not {raw!r}", param="days"),
            back=("/console/costs", "Costs for the last 30 days"))
    days = int(raw)
    store = request.app[GATEWAY].runtime.store
    now = time.time()
    since = now - (days - 1) * DAY_S
    by_day_model, by_model, by_key = await asyncio.gather(*(
        asyncio.to_thread(usage_report, store, since=since, by=by)
        for by in (("day", "model"), ("model",), ("key",))
    ))
    axis = [day_of(since + n * DAY_S) for n in range(days)]
    return render(
        request, "costs.html", title="Costs", days=days, periods=PERIODS,
        first_day=axis[0], last_day=axis[-1], totals=totals(by_model), by_model=by_model,
        by_key=by_key, daily=sorted(by_day_model, key=lambda r: (r["day"], r["model"]),
                                    reverse=True),
        chart=chart_data(axis, by_day_model, [r["model"] for r in by_model]),
    )


def totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {name: sum(row[name] for row in rows) for name in _TOTALS}


def chart_data(axis: list[str], rows: list[dict[str, Any]], models: list[str]) -> dict:
    """Per model, one value a day (0 where none), on an x axis of UTC midnights in seconds:
    {"x": [...], "days": [...], "series": [{"model", "cost", "tokens", "requests"}]}."""
    index = {day: i for i, day in enumerate(axis)}
    series = {model: {"model": model or "(no model)", "cost": [0.0] * len(axis),
                      "tokens": [0] * len(axis), "requests": [0] * len(axis)}
              for model in models}
    for row in rows:
        i = index.get(row["day"])
        if i is None or row["model"] not in series:
            continue
        s = series[row["model"]]
        s["cost"][i] += row["cost_usd"]
        s["tokens"][i] += row["prompt_tokens"] + row["completion_tokens"]
        s["requests"][i] += row["requests"]
    return {"x": [_midnight(day) for day in axis], "days": axis, "series": list(series.values())}


def _midnight(day: str) -> int:
    return calendar.timegm(time.strptime(day, "%Y-%m-%d"))
