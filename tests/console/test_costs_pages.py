"""The costs page's data, without a browser: spend and tokens by model, day and key over the
chosen period, as `keel usage` reports them, and its chart data."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import ModelConfig, PricingConfig
from keel.console.views.costs import chart_data
from keel.gateway import Gateway
from keel.ops.keys import KeyStore
from keel.ops.traces import TraceRecorder
from keel.ops.usage import day_of, usage_report
from tests.api.conftest import fake_config
from tests.ops.helpers import make_trace, tracing

DAY = 86400.0
# US$ per million tokens: dear enough that a few tokens show in the page's six decimals.
PRICING = PricingConfig(input=1000.0, output=3000.0)


@pytest.fixture
async def priced(tmp_path):
    """(base URL, gateway) of a Keel whose `fake/priced` echoes and costs money."""
    config = fake_config(tmp_path)
    config.models["fake/priced"] = ModelConfig(provider="fake", model="echo", pricing=PRICING)
    gateway = Gateway(config)
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


async def chat(http, base, model, text):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{base}/v1/chat/completions", json=body) as r:
        assert r.status == 200
        return (await r.json())["usage"]


async def wait_for_usage(store, requests: int):
    for _ in range(100):
        rows = usage_report(store, by=("model",))
        if sum(r["requests"] for r in rows) >= requests:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError("the trace writer did not write usage in time")


def record(store, traces) -> None:
    recorder = TraceRecorder(store, tracing()).start()
    for trace in traces:
        recorder.submit(trace)
    recorder.close()


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def island(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="costs-data">(.*?)</script>', html,
                      re.DOTALL)
    return json.loads(match.group(1))


async def get(http, url):
    async with http.get(url) as r:
        return r.status, await r.text()


async def test_costs_of_real_requests_on_a_priced_model(priced, http):
    base, gateway = priced
    usages = [await chat(http, base, "fake/priced", "hello there, what does it cost?"),
              await chat(http, base, "fake/priced", "and again")]
    await chat(http, base, "fake/echo", "free of charge")
    await wait_for_usage(gateway.runtime.store, 3)
    spent = sum(PRICING.cost(u["prompt_tokens"], u["completion_tokens"]) for u in usages)
    tokens_in = sum(u["prompt_tokens"] for u in usages)
    assert spent > 0

    status, html = await get(http, f"{base}/console/costs")
    assert status == 200 and "<title>Costs · Keel console</title>" in html
    assert html.count("<h1") == 1
    words = text_of(html)
    assert f"Spend US$ {spent:.6f}" in words and "Requests 3" in words
    # By model, biggest spend first; the unpriced model counts its tokens at US$0.
    by_model = words[words.index("By model"):words.index("By key")]
    assert f"fake/priced 2 0 {tokens_in:,}" in by_model and f"{spent:.6f}" in by_model
    assert by_model.index("fake/priced") < by_model.index("fake/echo 1 0")
    assert "0.000000" in by_model
    # By key: with auth off, no key.
    assert "(no key) 3 0" in words
    # The daily table and the charts' data agree: today, per model.
    today = day_of(time.time())
    assert f"{today} fake/priced 2 0" in words
    chart = island(html)
    assert len(chart["days"]) == 30 and chart["days"][-1] == today
    assert [s["model"] for s in chart["series"]] == ["fake/priced", "fake/echo"]
    assert chart["series"][0]["cost"][-1] == pytest.approx(spent)
    assert chart["series"][0]["requests"][-1] == 2 and chart["series"][1]["cost"][-1] == 0
    assert sum(chart["series"][0]["cost"]) == pytest.approx(spent)
    assert '<script src="/console/static/vendor/uPlot.iife.min.js">' in html


async def test_the_period_selector_keeps_older_days_out(keel_console, http):
    base, gateway = keel_console
    store = gateway.runtime.store
    keys = KeyStore(store)
    bot, _ = keys.create("search-bot")
    now = time.time()
    record(store, [
        make_trace(0, key_id=bot.id, cost_usd=0.25, started_at=now),
        make_trace(1, key_id=bot.id, cost_usd=0.5, started_at=now - 3 * DAY),
        make_trace(2, model="big", cost_usd=2.0, started_at=now - 20 * DAY),
        make_trace(3, model="big", cost_usd=4.0, started_at=now - 60 * DAY, status=500),
    ])
    expected = {7: (0.75, 2), 30: (2.75, 3), 90: (6.75, 4)}
    for days, (spend, requests) in expected.items():
        status, html = await get(http, f"{base}/console/costs?days={days}")
        assert status == 200
        words = text_of(html)
        assert f"Spend US$ {spend:.6f}" in words and f"Requests {requests}" in words, days
        assert f'href="/console/costs?days={days}" aria-current="page"' in html
        chart = island(html)
        assert len(chart["x"]) == days and chart["x"][1] - chart["x"][0] == DAY
        assert sum(sum(s["cost"]) for s in chart["series"]) == pytest.approx(spend)
    # The key's name beside its id, and the error counted on its day.
    words = text_of((await get(http, f"{base}/console/costs?days=90"))[1])
    assert f"search-bot {bot.id} 2 0 21 10 0.750000" in words
    assert f"{day_of(now - 60 * DAY)} big 1 1" in words
    words = text_of((await get(http, f"{base}/console/costs?days=7"))[1])
    assert "big" not in words.split()


async def test_no_usage_says_so(keel_console, http):
    status, html = await get(http, f"{keel_console[0]}/console/costs?days=7")
    assert status == 200 and "No usage recorded in the last 7 days" in html
    assert "costs-data" not in html


@pytest.mark.parametrize("days", ["14", "0", "-7", "thirty", "7.5"])
async def test_a_bad_period_is_a_400_page(keel_console, http, days):
    status, html = await get(http, f"{keel_console[0]}/console/costs?days={days}")
    assert status == 400 and "days: expected one of 7, 30, 90" in html
    assert "<h1>Bad request</h1>" in html and "Traceback" not in html


def test_chart_data_fills_days_without_usage_with_zeros():
    axis = ["2026-01-01", "2026-01-02", "2026-01-03"]
    rows = [{"day": "2026-01-03", "model": "m", "requests": 2, "prompt_tokens": 5,
             "completion_tokens": 7, "cost_usd": 0.5},
            {"day": "2026-01-01", "model": "", "requests": 1, "prompt_tokens": 1,
             "completion_tokens": 1, "cost_usd": 0.0}]
    data = chart_data(axis, rows, ["m", ""])
    assert data["x"] == [1767225600, 1767312000, 1767398400]
    assert data["series"] == [
        {"model": "m", "cost": [0.0, 0.0, 0.5], "tokens": [0, 0, 12], "requests": [0, 0, 2]},
        {"model": "(no model)", "cost": [0.0, 0.0, 0.0], "tokens": [2, 0, 0],
         "requests": [1, 0, 0]},
    ]
