"""Usage accounting: the trace writer's rollup into usage_daily, its queries, and `keel usage`."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from keel.cli.main import cli
from keel.ops.keys import KeyStore
from keel.ops.traces import TraceRecorder
from keel.ops.usage import UsageRollup, spend_this_period, usage_report
from keel.store.models import usage_daily
from tests.ops.helpers import make_trace, tracing

DAY = 86400.0


def day_of(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def record(store, traces, errors=0, **config) -> None:
    recorder = TraceRecorder(store, tracing(**config)).start()
    for trace in traces:
        recorder.submit(trace)
    recorder.close()
    assert recorder.errors == errors


def usage_rows(store) -> list[dict]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(usage_daily).order_by(
            usage_daily.c.day, usage_daily.c.key_id, usage_daily.c.model)).mappings().all()
    return [dict(row) for row in rows]


def traces_for_two_keys(now: float) -> list:
    out = []
    for n in range(4):  # key_a, team search, gpt-4o-mini: 4 requests, one failed
        out.append(make_trace(n, key_id="key_a", key_metadata={"team": "search"},
                              cost_usd=0.01, status=500 if n == 3 else 200,
                              started_at=now))
    out.append(make_trace(0, model="other", key_id="key_b", cost_usd=0.5, started_at=now))
    out.append(make_trace(1, started_at=now - DAY))  # no key, yesterday, not priced
    return out


def test_each_batch_rolls_up_into_usage_daily(store):
    now = time.time()
    record(store, traces_for_two_keys(now), batch_size=2)  # several batches, one row each
    rows = {(r["day"], r["key_id"], r["model"]): r for r in usage_rows(store)}
    assert len(rows) == 3
    a = rows[(day_of(now), "key_a", "gpt-4o-mini")]
    assert a["team"] == "search" and a["requests"] == 4 and a["errors"] == 1
    assert a["prompt_tokens"] == 10 + 11 + 12 + 13 and a["completion_tokens"] == 20
    assert a["cost_usd"] == pytest.approx(0.04)
    b = rows[(day_of(now), "key_b", "other")]
    assert b["team"] == "" and b["requests"] == 1 and b["cost_usd"] == pytest.approx(0.5)
    anon = rows[(day_of(now - DAY), "", "gpt-4o-mini")]
    assert anon["cost_usd"] == 0 and anon["requests"] == 1


def test_a_later_batch_adds_to_the_same_row(store):
    now = time.time()
    record(store, [make_trace(0, key_id="key_a", cost_usd=0.25, started_at=now)])
    record(store, [make_trace(1, key_id="key_a", cost_usd=0.5, started_at=now)])
    (row,) = usage_rows(store)
    assert row["requests"] == 2 and row["cost_usd"] == pytest.approx(0.75)


def test_a_failed_batch_leaves_no_usage(store):
    trace = make_trace(0, key_id="key_a", cost_usd=0.25)
    record(store, [trace])
    # The same id again: the insert fails, and the rollup in its transaction rolls back with it.
    record(store, [trace], errors=1)
    (row,) = usage_rows(store)
    assert row["requests"] == 1


def test_spend_this_period_per_key_and_team(store):
    now = time.time()
    record(store, traces_for_two_keys(now))
    spend = spend_this_period(store, now)
    assert spend[("key", "key_a", "month")] == pytest.approx(0.04)
    assert spend[("key", "key_a", "day")] == pytest.approx(0.04)
    assert spend[("team", "search", "day")] == pytest.approx(0.04)
    assert spend[("key", "key_b", "month")] == pytest.approx(0.5)
    assert ("team", "", "month") not in spend


def test_report_groups_and_filters(store):
    now = time.time()
    keys = KeyStore(store)
    record_a, _ = keys.create("search-bot", metadata={"team": "search"})
    traces = traces_for_two_keys(now)
    for trace in traces:
        if trace.key_id == "key_a":
            trace.key_id = record_a.id
    record(store, traces)
    by_key = usage_report(store, by=("key",))
    assert [row["key"] for row in by_key] == ["key_b", record_a.id, ""]  # biggest spend first
    assert by_key[1]["key_name"] == "search-bot" and by_key[1]["requests"] == 4
    by_day = usage_report(store, by=("day",), since=now - 3600)
    assert [row["day"] for row in by_day] == [day_of(now)]
    only_a = usage_report(store, by=("model", "day"), key_id=record_a.id)
    assert only_a == [{"model": "gpt-4o-mini", "day": day_of(now), "requests": 4, "errors": 1,
                       "prompt_tokens": 46, "completion_tokens": 20,
                       "cost_usd": pytest.approx(0.04)}]
    with pytest.raises(ValueError):
        usage_report(store, by=("colour",))


def test_rollup_reads_positional_and_named_rows():
    dialect = sa.create_engine("sqlite://").dialect
    keys = ["id", "created_at", "key_id", "key_metadata", "model", "status", "prompt_tokens",
            "completion_tokens", "cost_usd"]
    at = 1_798_761_599.0
    rows = [("t1", at, "k", '{"team": "x"}', "m", 200, 1, 2, 0.5),
            ("t2", at, "k", '{"team": "x"}', "m", 429, None, None, None)]
    expected = [{"day": "2026-12-31", "key_id": "k", "team": "x", "model": "m", "requests": 2,
                 "errors": 1, "prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.5}]
    assert UsageRollup(dialect, keys, positional=True).aggregate(rows) == expected
    named = [dict(zip(keys, row)) for row in rows]
    assert UsageRollup(dialect, keys, positional=False).aggregate(named) == expected


# -- keel usage --------------------------------------------------------------------------------


def test_usage_cli_table_and_json(store, db_url):
    now = time.time()
    record(store, traces_for_two_keys(now))
    runner = CliRunner()
    result = runner.invoke(cli, ["usage", "--db", db_url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["key", "model", "day"]
    assert "key_b" in lines[1] and "0.500000" in lines[1]
    assert lines[-1].split()[0] == "total" and lines[-1].split()[-1] == "0.540000"

    result = runner.invoke(cli, ["usage", "--db", db_url, "--by", "team", "--json"])
    assert result.exit_code == 0, result.output
    teams = {row["team"]: row for row in json.loads(result.output)}
    assert teams["search"]["requests"] == 4 and teams["search"]["errors"] == 1
    assert teams[""]["cost_usd"] == pytest.approx(0.5)

    result = runner.invoke(cli, ["usage", "--db", db_url, "--key", "key_b", "--by", "model"])
    assert result.exit_code == 0 and "other" in result.output and "gpt-4o-mini" not in result.output

    result = runner.invoke(cli, ["usage", "--db", db_url, "--by", "colour"])
    assert result.exit_code == 2 and "--by" in result.output


def test_usage_cli_without_usage(store, db_url):
    result = CliRunner().invoke(cli, ["usage", "--db", db_url, "--since", "1d"])
    assert result.exit_code == 0 and result.output.strip() == "no usage recorded"
