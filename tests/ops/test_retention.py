"""Trace retention: `prune` by age and count in batches, the background `Pruner`, and
`keel traces prune`; feedback, evals and usage totals always survive."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from keel.cli.main import cli
from keel.config import TracingConfig
from keel.errors import InvalidRequest
from keel.ops.feedback import add_feedback
from keel.ops.retention import DAY_S, Pruner, prune
from keel.ops.traces import trace_row
from keel.store import open_store
from keel.store.models import eval_results, eval_runs, feedback, traces, usage_daily
from tests.ops.helpers import make_trace

NOW = time.time()


def seed(store, ages_days: list[float], now: float = NOW) -> list[str]:
    """One trace per age (days before `now`), inserted directly; their ids, in the given order."""
    rows = []
    for n, age in enumerate(ages_days):
        trace = make_trace(n)
        trace.started_at = now - age * DAY_S
        rows.append(trace_row(trace))
    with store.engine.begin() as conn:
        conn.execute(traces.insert(), rows)
    return [row["id"] for row in rows]


def ids(store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(traces.c.id)).scalars())


def count(store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.fixture
def ten(store):
    """Ten traces 0.5, 1.5, ... 9.5 days old: ids[i] is i + 0.5 days old."""
    return seed(store, [i + 0.5 for i in range(10)])


def test_prune_by_age(store, ten):
    assert prune(store, older_than_s=5 * DAY_S, now=NOW) == 5
    assert ids(store) == set(ten[:5])
    assert prune(store, older_than_s=5 * DAY_S, now=NOW) == 0


def test_prune_by_count_keeps_the_newest(store, ten):
    assert prune(store, keep=3) == 7
    assert ids(store) == set(ten[:3])
    assert prune(store, keep=3) == 0
    assert prune(store, keep=100) == 0 and len(ids(store)) == 3


def test_keep_zero_deletes_everything(store, ten):
    assert prune(store, keep=0) == 10
    assert ids(store) == set()
    assert prune(store, keep=0) == 0


@pytest.mark.parametrize("older_than_days, keep, survivors", [
    (7, 5, 5),   # the count is stricter: the newest five stay
    (3, 5, 3),   # the age is stricter: only the three younger than 3 days stay
    (20, 4, 4),  # nothing is that old: the count alone decides
])
def test_prune_by_age_and_count_takes_whichever_deletes_more(store, ten, older_than_days, keep,
                                                             survivors):
    deleted = prune(store, older_than_s=older_than_days * DAY_S, keep=keep, now=NOW)
    assert deleted == 10 - survivors
    assert ids(store) == set(ten[:survivors])


def test_ties_on_created_at_are_broken_by_id(store):
    made = seed(store, [1.0] * 6)  # one instant: the id decides which are newest
    assert prune(store, keep=2) == 4
    assert ids(store) == set(sorted(made)[-2:])


def test_dry_run_counts_and_deletes_nothing(store, ten):
    assert prune(store, older_than_s=5 * DAY_S, now=NOW, dry_run=True) == 5
    assert prune(store, keep=2, dry_run=True) == 8
    assert prune(store, older_than_s=8 * DAY_S, keep=6, now=NOW, dry_run=True) == 4
    assert ids(store) == set(ten)


def test_batches_smaller_than_the_total(store, ten):
    statements = []

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", on_execute)
    try:
        assert prune(store, keep=1, batch_size=2, pause_s=0) == 9
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", on_execute)
    assert ids(store) == {ten[0]}
    assert len(statements) == 5  # 2 + 2 + 2 + 2 + 1: one short transaction each


def test_feedback_evals_and_usage_are_untouched(store, ten):
    for trace_id in ten:
        add_feedback(store, trace_id, 1, comment="kept")
    with store.engine.begin() as conn:
        conn.execute(usage_daily.insert(), [
            {"day": f"2026-11-{d:02d}", "key_id": "key_a", "team": "t", "model": "m",
             "requests": 3, "errors": 0, "prompt_tokens": 30, "completion_tokens": 9,
             "cost_usd": 0.5} for d in range(1, 11)])
        conn.execute(eval_runs.insert().values(
            id="run1", created_at=NOW - 30 * DAY_S, suite="s", status="finished",
            dataset_name="d", dataset_version="v", config={}, keel_version="0"))
        conn.execute(eval_results.insert().values(
            run_id="run1", variant="a", sample_id="s1", repeat=0, trace_id=ten[-1],
            created_at=NOW - 30 * DAY_S))
    assert prune(store, keep=0) == 10
    assert count(store, feedback) == 10
    assert count(store, usage_daily) == 10
    assert count(store, eval_runs) == 1 and count(store, eval_results) == 1


def test_prune_needs_a_limit(store):
    with pytest.raises(InvalidRequest, match="age"):
        prune(store)
    with pytest.raises(InvalidRequest):
        prune(store, older_than_s=0)
    with pytest.raises(InvalidRequest):
        prune(store, keep=-1)


# -- the background pruner -------------------------------------------------------------------


def test_pruner_prunes_while_another_thread_keeps_writing(db_url):
    """The trace writer's pattern (short insert transactions, one after another) against a pruner
    running every 50 ms: no errors on either side, and the policy holds once writing stops."""
    store = open_store(db_url)
    config = TracingConfig(retention_days=1, max_traces=40, prune_interval_s=0.05)
    pruner = Pruner(store, config, batch_size=25, first_run_after_s=0).start()
    errors: list[BaseException] = []
    stop = threading.Event()
    written = 0

    def writer() -> None:
        nonlocal written
        n = 0
        try:
            while not stop.is_set():
                rows = []
                for _ in range(5):
                    trace = make_trace(n)
                    # Every other trace is two days old: the age limit has work too.
                    trace.started_at = time.time() - (2 * DAY_S if n % 2 else 0)
                    rows.append(trace_row(trace))
                    n += 1
                with store.engine.begin() as conn:
                    conn.execute(traces.insert(), rows)
                written += len(rows)
                # The real writer flushes every flush_interval_s; flat out, a loop of inserts on
                # a 2-core box would only measure which thread the scheduler favours.
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (pruner.runs < 5 or written < 400) and time.monotonic() < deadline:
            time.sleep(0.05)
            assert not errors, errors
    finally:
        stop.set()
        thread.join(30)
        pruner.close()
    try:
        assert not errors, errors
        assert not thread.is_alive() and pruner._thread is None
        stats = pruner.stats()
        assert stats["runs"] >= 5 and stats["last_error"] is None, stats
        assert stats["deleted_total"] > 0 and stats["last_run_at"] is not None
        pruner.run_once()  # what is left after the writer stopped
        with store.engine.connect() as conn:
            left = conn.execute(sa.select(traces.c.created_at)).scalars().all()
        assert len(left) == 40
        assert min(left) > time.time() - DAY_S  # no two-day-old trace survived
        assert pruner.stats()["deleted_total"] == written - 40
    finally:
        store.close()


def test_pruner_closes_promptly_and_first_runs_soon(store, ten):
    config = TracingConfig(max_traces=2, prune_interval_s=3600)
    pruner = Pruner(store, config, first_run_after_s=0.05).start()
    deadline = time.monotonic() + 30
    while pruner.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pruner.stats()["last_deleted"] == 8 and ids(store) == set(ten[:2])
    started = time.monotonic()
    pruner.close()
    # It was waiting out an hour's interval: an Event wakes it at once. The margin is wide on
    # purpose (a busy CI box); a sleep-based wait would take the whole hour.
    assert time.monotonic() - started < 5
    assert pruner.runs == 1


def test_pruner_without_a_policy_starts_no_thread(store):
    pruner = Pruner(store, TracingConfig()).start()
    assert pruner._thread is None
    pruner.close()


def test_a_failing_prune_is_logged_and_retried(caplog):
    with socket.socket() as sock:  # a loopback port nobody listens on: the store is "away"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"postgresql://keel@127.0.0.1:{port}/keel?connect_timeout=2",
                       migrate=False)
    pruner = Pruner(store, TracingConfig(retention_days=1, prune_interval_s=0.05),
                    first_run_after_s=0)
    try:
        with caplog.at_level(logging.WARNING, logger="keel.ops.retention"):
            pruner.start()
            deadline = time.monotonic() + 60
            while pruner.runs < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            pruner.close()
        stats = pruner.stats()
        assert stats["runs"] >= 2 and stats["deleted_total"] == 0
        assert stats["last_error"].startswith("OperationalError")
        assert "trace prune failed" in caplog.text and "retrying in" in caplog.text
    finally:
        pruner.close()
        store.close()


# -- keel traces prune -----------------------------------------------------------------------


def run(*args: str):
    return CliRunner().invoke(cli, ["traces", "prune", *args], catch_exceptions=False)


def test_cli_prune_by_age_count_and_dry_run(db_url, store, ten):
    result = run("--db", db_url, "--older-than", "8d", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "would delete 2 traces (older than 8d)"
    assert len(ids(store)) == 10
    result = run("--db", db_url, "--older-than", "8d")
    assert result.output.strip() == "deleted 2 traces (older than 8d)"
    result = run("--db", db_url, "--keep", "3", "--older-than", "5d", "--json")
    assert json.loads(result.output) == {"deleted": 5, "would_delete": None, "dry_run": False}
    assert ids(store) == set(ten[:3])
    result = run("--db", db_url, "--keep", "1")
    assert result.output.strip() == "deleted 2 traces (beyond the newest 1)"


def test_cli_prune_defaults_to_the_config(tmp_path, db_url, store, ten):
    config = tmp_path / "keel.yaml"
    config.write_text(f"store: {{url: '{db_url}'}}\n"
                      "tracing: {retention_days: 6, max_traces: 8}\npipeline: []\n")
    result = run("--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted 4 traces (older than 6d or beyond the newest 8)"
    assert ids(store) == set(ten[:6])
    # An option given on the command line replaces the configured policy, not adds to it.
    result = run("--config", str(config), "--keep", "5", "--dry-run")
    assert result.output.strip() == "would delete 1 trace (beyond the newest 5)"


def test_cli_prune_refuses_without_a_policy(db_url, store, ten):
    result = run("--db", db_url)
    assert result.exit_code == 2
    assert result.output.startswith("error: nothing to prune by: pass --older-than AGE")
    assert "tracing.retention_days" in result.output
    result = run("--db", db_url, "--older-than", "a month")
    assert result.exit_code == 2
    assert "--older-than: expected an age like 30s, 10m, 2h or 1d" in result.output
    assert "Traceback" not in result.output
    assert len(ids(store)) == 10


# -- wired into the gateway ------------------------------------------------------------------


async def test_the_gateway_runs_a_pruner_when_retention_is_configured(tmp_path):
    from keel.config import KeelConfig, ModelConfig, ProviderConfig
    from keel.gateway import Gateway

    config = KeelConfig(
        state_dir=tmp_path,
        providers={"fake": ProviderConfig(kind="fake")},
        models={"echo": ModelConfig(provider="fake", model="echo")},
        tracing=TracingConfig(max_traces=3, prune_interval_s=0.1, flush_interval_s=0.05),
    )
    async with Gateway(config) as gateway:
        assert isinstance(gateway.pruner, Pruner)
        for n in range(6):
            await gateway.complete({"model": "echo",
                                    "messages": [{"role": "user", "content": f"hi {n}"}]})
        assert gateway.recorder.flush(10)
        store = gateway.runtime.store
        deadline = time.monotonic() + 30
        while count(store, traces) > 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert count(store, traces) == 3
        assert gateway.pruner.stats()["deleted_total"] == 3
        pruner = gateway.pruner
    assert pruner._thread is None  # closed with the gateway

    config = config.model_copy(update={"tracing": TracingConfig()})
    async with Gateway(config) as gateway:
        assert gateway.pruner is None
