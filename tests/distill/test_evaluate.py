"""`keel distill evaluate`: teacher, base and trained student in one eval run, on the fake
upstream over a real socket. The fake's `fixed:<text>` models script each variant's quality, so
the retained share, the cost per 1,000 requests and the saving are known in advance."""

from __future__ import annotations

import click
import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.distill import distill_group
from keel.cli.main import KeelGroup
from keel.distill import lineage
from keel.evals.base import Sample
from keel.evals.dataset_store import import_dataset
from keel.evals.runs import get_run, results
from keel.providers.fake_server import serve_fake_upstream
from keel.store import open_store
from tests.store.backends import db_url  # noqa: F401  (fixture)

# 10 held-out samples: 8 expect "Paris", 2 expect "Rome"; each input is 2 words.
IDEALS = ["Paris"] * 8 + ["Rome"] * 2
TEACHER_PRICE = {"input": 10.0, "output": 30.0}  # $ per million tokens


@click.group(cls=KeelGroup)
def root() -> None:
    """Like `keel`: errors become one line and exit 2."""


root.add_command(distill_group)


def keel(*args):
    return CliRunner().invoke(root, ["distill", *map(str, args)], catch_exceptions=False)


@pytest.fixture
def upstream():
    with serve_fake_upstream() as url:
        yield url


def write_config(tmp_path, db_url, upstream, extra_models=None):  # noqa: F811
    models = {
        "teacher": {"provider": "up", "model": "fixed:Paris and Rome", "pricing": TEACHER_PRICE},
        "base": {"provider": "up", "model": "fixed:Berlin"},
        "student": {"provider": "up", "model": "fixed:Paris"},
        **(extra_models or {}),
    }
    config = {
        "state_dir": str(tmp_path / "state"),
        "store": {"url": db_url},
        "providers": {"up": {"kind": "openai", "base_url": upstream, "read_timeout": 10.0}},
        "models": models,
        "pipeline": [],
    }
    path = tmp_path / "keel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_job(db_url):  # noqa: F811
    """A training set whose test split is a stored eval dataset, and a finished job."""
    store = open_store(db_url)
    try:
        samples = [Sample(id=f"s{i}", input=[{"role": "user", "content": f"question {i}"}],
                          ideal=ideal) for i, ideal in enumerate(IDEALS)]
        name, version, _ = import_dataset(store, "faq-test", samples, "test")
        set_id = lineage.create_set(store, name="faq", source={"teacher": "teacher"},
                                    splits={"test": {"dataset": name, "version": version,
                                                     "count": len(samples)}})
        job_id = lineage.create_job(store, backend="openai", base_model="base", set_id=set_id)
        lineage.update_job(store, job_id, status="succeeded", result_model="student")
    finally:
        store.close()
    return job_id


def test_evaluate_prints_retained_quality_and_cost_saved(tmp_path, db_url, upstream):  # noqa: F811
    config = write_config(tmp_path, db_url, upstream)
    job_id = make_job(db_url)
    result = keel("evaluate", job_id, "--grader", "includes", "--config", config, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    g = report["graders"]["includes"]
    assert g["n"] == 10
    assert g["teacher"]["mean"] == 1.0 and g["student"]["mean"] == pytest.approx(0.8)
    assert g["base"]["mean"] == 0.0
    assert g["retained"] == pytest.approx(0.8) and g["base_retained"] == 0.0
    low, high = g["retained_ci"]
    assert low < 0.8 < high <= 1.0
    # Teacher: 2 prompt tokens at $10/M + 3 completion tokens ("Paris and Rome") at $30/M.
    per_request = (2 * 10.0 + 3 * 30.0) / 1e6
    assert report["variants"]["teacher"]["cost_per_1k"] == pytest.approx(1000 * per_request)
    assert report["variants"]["student"]["cost_per_1k"] == 0.0  # no pricing: local, free
    assert report["cost_saved_per_1k"] == pytest.approx(1000 * per_request)
    for variant in ("teacher", "base", "student"):
        assert report["variants"][variant]["latency_p50_ms"] > 0
        assert report["variants"][variant]["errors"] == 0

    # One eval run, three variants: what `keel eval compare` and the console read.
    store = open_store(db_url)
    try:
        run = get_run(store, report["run_id"])
        assert set(run["config"]["variants"]) == {"teacher", "base", "student"}
        assert len(results(store, run["id"])) == 30
        assert run["dataset_name"] == "faq-test"
        evaluations = lineage.get_job(store, job_id)["options"]["evaluations"]
        assert [e["eval_run_id"] for e in evaluations] == [run["id"]]
    finally:
        store.close()

    text = keel("evaluate", job_id, "--grader", "includes", "--config", config,
                "--no-progress").output
    assert "80.0%" in text and "$0.1100" in text
    assert "cost saved per 1,000 requests: $0.1100" in text


def test_evaluate_with_a_suite_file_keeps_its_prompt_and_graders(tmp_path, db_url, upstream):  # noqa: F811
    config = write_config(tmp_path, db_url, upstream)
    data = tmp_path / "held.jsonl"
    data.write_text("\n".join(orjson.dumps({"id": f"q{i}", "input": "hi", "ideal": ideal})
                              .decode() for i, ideal in enumerate(["Paris", "Rome"])) + "\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "held", "dataset": "held.jsonl",
        "variants": {"x": {"model": "teacher", "params": {"temperature": 0}}},
        "graders": [{"kind": "exact", "name": "same"}],
    }))
    result = keel("evaluate", "--teacher", "teacher", "--base", "base", "--student", "student",
                  "--suite", suite, "--config", config, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert list(report["graders"]) == ["same"]
    assert report["graders"]["same"]["teacher"]["mean"] == 0.0  # "Paris and Rome" is not exact
    assert report["graders"]["same"]["retained"] is None  # nothing to retain of 0
    store = open_store(db_url)
    try:
        variants = get_run(store, report["run_id"])["config"]["variants"]
    finally:
        store.close()
    assert {v["params"]["temperature"] for v in variants.values()} == {0}
    assert {v["model"] for v in variants.values()} == {"teacher", "base", "student"}


def test_evaluate_refuses_what_it_cannot_run(tmp_path, db_url, upstream):  # noqa: F811
    config = write_config(tmp_path, db_url, upstream)
    job_id = make_job(db_url)
    result = keel("evaluate", job_id, "--config", config)
    assert result.exit_code == 2 and "--grader" in result.output
    result = keel("evaluate", job_id, "--grader", "includes", "--teacher", "nope",
                  "--config", config)
    assert result.exit_code == 2 and "'nope' is not in the gateway config" in result.output
    result = keel("evaluate", "--grader", "includes", "--config", config)
    assert result.exit_code == 2 and "--teacher" in result.output


def test_a_suite_file_brings_its_own_dataset_when_the_set_has_no_test_split(tmp_path):
    """A set trained on all its examples (split 100/0/0) still gives the models and the lineage;
    the suite file names the held-out data."""
    from keel.distill.evaluate import plan_for
    from keel.errors import InvalidRequest

    store = open_store(f"sqlite:///{tmp_path / 'keel.db'}")
    try:
        set_id = lineage.create_set(
            store, name="faq", source={"teacher": "support-bot"},
            splits={"train": {"dataset": "faq-train", "version": "v1", "count": 61},
                    "test": {"dataset": "faq-test", "version": None, "count": 0}})
        job_id = lineage.create_job(store, backend="local", base_model="smollm2", set_id=set_id)
        lineage.update_job(store, job_id, status="succeeded", result_model="student.gguf")
        with pytest.raises(InvalidRequest, match="split is empty"):
            plan_for(store, job=job_id)
        plan = plan_for(store, job=job_id, own_dataset=True)
        assert (plan.teacher, plan.base, plan.student, plan.dataset, plan.job_id) == (
            "support-bot", "smollm2", "student.gguf", None, job_id)
    finally:
        store.close()
