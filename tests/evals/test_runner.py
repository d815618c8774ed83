"""The runner against in-process fake models: results and audit stored, bounded concurrency,
retries on transient errors, resume after an interruption. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from keel.config import load_config
from keel.evals import runs
from keel.evals.runner import run_suite
from keel.evals.suite import load_suite
from keel.providers.fake import FakeProvider
from keel.store import open_store
from keel.store.models import traces
from tests.evals.support import write_config, write_suite
from tests.store.backends import db_url  # noqa: F401  (fixture)


@pytest.fixture
def setup(tmp_path, db_url):  # noqa: F811
    config_path = write_config(tmp_path, db_url)
    store = open_store(db_url)
    yield tmp_path, config_path, store
    store.close()


def _run(tmp_path, config_path, store, resume=None, **fields):
    suite = load_suite(write_suite(tmp_path, config_path, **fields))
    return asyncio.run(run_suite(suite, load_config(config_path), store, resume=resume,
                                 progress=False, config_path=str(config_path)))


def test_a_run_stores_every_cell_its_grades_and_the_audit(setup):
    tmp_path, config_path, store = setup
    outcome = _run(tmp_path, config_path, store, variants={
        "base": {"model": "echo"},
        "fixed": {"model": "fixed-paris", "prompt": "Say Paris.", "params": {"seed": 1}}},
        graders=[{"kind": "includes"}, {"kind": "fact"}], judge={"model": "judge-c"})
    run = runs.get_run(store, outcome.run_id)
    assert run["status"] == "finished" and run["dataset_name"] == "data"
    assert len(run["dataset_version"]) == 16 and run["keel_version"]
    summary = run["summary"]["variants"]
    assert summary["base"]["graders"]["includes"]["mean"] == 0.5  # even samples echo the ideal
    assert summary["base"]["graders"]["fact"]["mean"] == 1.0      # judge-c always says C
    assert summary["fixed"]["graders"]["includes"]["mean"] == 0.0
    assert summary["base"]["cost_usd"] > 0 and summary["fixed"]["cost_usd"] is None
    audit = run["config"]
    fixed = audit["variants"]["fixed"]
    assert fixed["prompt"] == {"system": "Say Paris."} and fixed["params"] == {"seed": 1}
    assert (fixed["provider"], fixed["upstream_model"]) == ("fake", "fixed:Paris")
    assert fixed["system_fingerprints"] == ["fp_fake_v1"]
    assert audit["judge"]["model"] == "judge-c" and "prompt" in audit["graders"]["fact"]
    cells = runs.results(store, outcome.run_id)
    assert len(cells) == 12
    cell = next(c for c in cells if c["variant"] == "base" and c["sample_id"] == "s0")
    assert cell["output"]["text"] == "question 0 about answer0"
    assert cell["output"]["response"]["object"] == "chat.completion"
    assert cell["prompt_tokens"] == 4 and cell["latency_ms"] > 0
    assert cell["grades"]["fact"]["label"] == "C"
    # Each cell names the gateway trace of its call.
    with store.engine.connect() as conn:
        trace_ids = set(conn.execute(sa.select(traces.c.id)).scalars())
    assert cell["trace_id"] in trace_ids


def test_concurrency_is_bounded(setup, monkeypatch):
    tmp_path, config_path, store = setup
    in_flight, peak = 0, 0
    real_chat = FakeProvider.chat

    async def counting_chat(self, body, model):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await real_chat(self, body, model)
        finally:
            in_flight -= 1

    monkeypatch.setattr(FakeProvider, "chat", counting_chat)
    _run(tmp_path, config_path, store, n=12, concurrency=3,
         variants={"slow": {"model": "slow"}})
    assert peak == 3


def test_transient_errors_are_retried(setup):
    tmp_path, config_path, store = setup
    # `flaky` fails every other call with a 502: one retry always gets through.
    outcome = _run(tmp_path, config_path, store, n=4, concurrency=1, retries=1,
                   variants={"flaky": {"model": "flaky"}})
    stats = outcome.summary["variants"]["flaky"]
    assert stats["errors"] == 0 and stats["graders"]["includes"]["mean"] == 0.5


def test_errors_that_remain_are_recorded_and_graded_zero(setup):
    tmp_path, config_path, store = setup
    outcome = _run(tmp_path, config_path, store, n=2, retries=2,
                   variants={"down": {"model": "broken"}, "bad": {"model": "bad-request"}})
    cells = runs.results(store, outcome.run_id)
    down = [c for c in cells if c["variant"] == "down"]
    assert all(c["error"]["status"] == 502 and c["error"]["retries"] == 2 for c in down)
    bad = [c for c in cells if c["variant"] == "bad"]
    assert all(c["error"]["retries"] == 0 for c in bad)  # a 400 is not retried
    assert all(c["grades"]["includes"]["score"] == 0 for c in cells)
    assert outcome.summary["variants"]["down"]["errors"] == 2


def test_resume_runs_only_the_missing_cells(setup, monkeypatch):
    tmp_path, config_path, store = setup
    suite = load_suite(write_suite(tmp_path, config_path, n=20, concurrency=2,
                                   variants={"slow": {"model": "slower"}}))
    config = load_config(config_path)

    async def interrupted():
        task = asyncio.create_task(run_suite(suite, config, store, progress=False))
        # Start-up time differs per database: wait for the run to exist, then let a few
        # 150 ms cells (two at a time) finish out of twenty.
        for _ in range(2000):
            await asyncio.sleep(0.005)
            if runs.list_runs(store):
                break
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    (run,) = runs.list_runs(store)
    assert run["status"] == "failed"
    kept = runs.results(store, run["id"])
    assert 0 < len(kept) < 20

    calls = []
    real_chat = FakeProvider.chat

    async def counting_chat(self, body, model):
        calls.append(body["messages"][-1]["content"])
        return await real_chat(self, body, model)

    monkeypatch.setattr(FakeProvider, "chat", counting_chat)
    outcome = asyncio.run(run_suite(suite, config, store, resume=run["id"][:10],
                                    progress=False))
    assert outcome.run_id == run["id"]
    assert len(calls) == outcome.cells_run == 20 - len(kept) and outcome.cells_kept == len(kept)
    done = {c["sample_id"] for c in kept}
    assert not any(f"question {s[1:]} " in f"{c} " for c in calls for s in done)
    after = runs.results(store, run["id"])
    assert len(after) == 20 and runs.get_run(store, run["id"])["status"] == "finished"
    assert {c["id"] for c in kept} <= {c["id"] for c in after}  # earlier rows untouched


def test_resume_rejects_another_suite(setup):
    tmp_path, config_path, store = setup
    first = _run(tmp_path, config_path, store, n=2)
    from keel.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be resumed"):
        _run(tmp_path, config_path, store, n=3, resume=first.run_id)


def test_unknown_model_names_the_suite_field(setup):
    tmp_path, config_path, store = setup
    from keel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"variants\.v\.model: no model 'nope'"):
        _run(tmp_path, config_path, store, variants={"v": {"model": "nope"}})
    with pytest.raises(ConfigError, match="judge.model"):
        _run(tmp_path, config_path, store, graders=[{"kind": "fact"}], judge={"model": "nope"})


def test_repeats_report_agreement(setup):
    tmp_path, config_path, store = setup
    outcome = _run(tmp_path, config_path, store, n=4, repeats=3)
    includes = outcome.summary["variants"]["base"]["graders"]["includes"]
    assert includes["n"] == 12 and includes["agreement"] == 1.0 and includes["pass_all"] == 0.5
