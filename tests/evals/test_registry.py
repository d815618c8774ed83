"""OpenAI evals registry YAML run as it is, from the registry files in tests/data, on fake models."""

from __future__ import annotations

import asyncio

import pytest

from keel.config import load_config
from keel.errors import ConfigError
from keel.evals import runs
from keel.evals.registry import load_registry_suites
from keel.evals.runner import run_suite
from keel.store import open_store
from tests.data_paths import OPENAI_EVALS
from tests.evals.support import write_config

REGISTRY = OPENAI_EVALS


def test_basic_classes_map_to_graders():
    suites = load_registry_suites(REGISTRY / "evals" / "test-basic.yaml", "echo")
    # test-match (evals.elsuite.test.match:TestMatch) has no samples file: not runnable here.
    assert [s.name for s in suites] == ["test-fuzzy-match", "test-includes",
                                        "test-includes-ignore-case"]
    fuzzy, includes, ignore_case = suites
    assert fuzzy.graders[0].kind == "fuzzy_match"
    assert includes.graders[0].options == {"case_sensitive": True}
    assert ignore_case.graders[0].options == {"case_sensitive": False}
    assert fuzzy.dataset_path() == REGISTRY / "data" / "test_fuzzy_match" / "samples.jsonl"
    assert list(fuzzy.variants) == ["echo"]


def test_modelgraded_specs_come_from_the_registry():
    suites = load_registry_suites(REGISTRY / "evals" / "coqa-ex.yaml", "echo",
                                  judge_model="judge-c")
    by_name = {s.name: s for s in suites}
    match = by_name["coqa-match"].graders[0]
    assert (match.kind, match.options["prefix"]) == ("exact", True)
    fact = by_name["coqa-fact-expl"].graders[0]
    assert fact.kind == "fact" and fact.options["eval_type"] == "classify_cot"
    assert fact.options["spec_path"] == str(REGISTRY / "modelgraded" / "fact.yaml")
    closedqa = by_name["coqa-closedqa-correct"].graders[0]
    assert closedqa.kind == "classify"
    assert closedqa.options["args"] == {"criteria": "correctness: Is the answer correct?"}
    assert by_name["coqa-fact"].judge.model == "judge-c"


def test_errors_are_clear():
    with pytest.raises(ConfigError, match="no file .*loss_logic/samples.jsonl"):
        load_registry_suites(REGISTRY / "evals" / "loss-logic.yaml", "echo")
    with pytest.raises(ConfigError, match="TestMatch is not supported"):
        load_registry_suites(REGISTRY / "evals" / "test-basic.yaml", "echo",
                             eval_name="test-match")
    with pytest.raises(ConfigError, match="no eval 'nope'"):
        load_registry_suites(REGISTRY / "evals" / "test-basic.yaml", "echo", eval_name="nope")


def _run(tmp_path, suite):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = write_config(tmp_path, f"sqlite:///{tmp_path / 'keel.db'}")
    store = open_store(f"sqlite:///{tmp_path / 'keel.db'}")
    try:
        outcome = asyncio.run(run_suite(suite, load_config(config_path), store, progress=False))
        return outcome, runs.results(store, outcome.run_id)
    finally:
        store.close()


def test_a_registry_includes_eval_runs_and_honours_ignore_case(tmp_path):
    path = REGISTRY / "evals" / "test-basic.yaml"
    (folded,) = load_registry_suites(path, "fixed-millie", eval_name="test-includes-ignore-case")
    outcome, cells = _run(tmp_path / "a", folded)
    stats = outcome.summary["variants"]["fixed-millie"]["graders"]["includes"]
    # Of the three samples only the Stranger Things one expects "Millie Bobby Brown".
    assert stats["n"] == len(cells) == 3 and stats["mean"] == pytest.approx(1 / 3)
    (exact_case,) = load_registry_suites(path, "fixed-millie", eval_name="test-includes")
    outcome, _ = _run(tmp_path / "b", exact_case)
    assert outcome.summary["variants"]["fixed-millie"]["graders"]["includes"]["mean"] == 0


def test_a_modelgraded_fact_eval_runs_with_a_fake_judge(tmp_path):
    (suite,) = load_registry_suites(REGISTRY / "evals" / "logic.yaml", "echo",
                                    judge_model="judge-d")
    outcome, cells = _run(tmp_path, suite)
    fact = outcome.summary["variants"]["echo"]["graders"]["fact"]
    assert fact["mean"] == 0.0 and fact["n"] == len(cells)
    assert {c["grades"]["fact"]["label"] for c in cells} == {"D"}
