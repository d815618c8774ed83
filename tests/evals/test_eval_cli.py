"""`keel eval` end to end in-process: run, gates and their exit codes, list/show, compare,
export, the HTML report. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import click
import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.evals import eval_group
from keel.cli.main import KeelGroup
from tests.data_paths import OPENAI_EVALS
from tests.evals.support import write_config, write_suite
from tests.store.backends import db_url  # noqa: F401  (fixture)


@click.group(cls=KeelGroup)
def root() -> None:
    """Like `keel`: errors become one red line and exit 2."""


root.add_command(eval_group)


@pytest.fixture
def env(tmp_path, db_url):  # noqa: F811
    config = write_config(tmp_path, db_url)
    suite = write_suite(tmp_path, config, n=6)
    return tmp_path, config, suite


def keel(*args: str):
    return CliRunner().invoke(root, ["eval", *map(str, args)], catch_exceptions=False)


def run_json(*args) -> dict:
    result = keel("run", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return orjson.loads(result.stdout)


def test_run_prints_a_summary_and_list_show_find_it(env):
    tmp_path, config, suite = env
    result = keel("run", suite, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "includes" in result.output and "0.500" in result.output
    runs = orjson.loads(keel("list", "--config", config, "--json").stdout)
    assert len(runs) == 1 and runs[0]["suite"] == "demo"
    shown = orjson.loads(keel("show", runs[0]["id"][:12], "--config", config, "--json").stdout)
    assert shown["config"]["variants"]["base"]["model"] == "echo"
    assert len(shown["results"]) == 6 and shown["results"][0]["input"]
    text = keel("show", runs[0]["id"], "--config", config, "--samples").output
    assert "question 0 about answer0" in text and "fp_fake_v1" in text


def test_fail_under_exits_1_with_a_clear_message(env):
    tmp_path, config, suite = env
    result = keel("run", suite, "--no-progress", "--fail-under", "includes=0.9")
    assert result.exit_code == 1
    assert "--fail-under includes=0.9: variant base has mean 0.500 < 0.9" in result.output
    report = run_json(suite, "--fail-under", "includes=0.5")
    assert report["gate"]["passed"] is True


def test_max_regression_compares_with_the_previous_run(env):
    tmp_path, config, suite = env
    first = run_json(suite, "--max-regression", "includes=0.1")
    assert first["gate"]["passed"] and "no earlier finished run" in first["gate"]["notes"][0]
    # Same suite, a worse model: half the samples stop passing.
    worse = yaml.safe_load(suite.read_text())
    worse["variants"]["base"]["model"] = "fixed-paris"
    suite.write_text(yaml.safe_dump(worse))
    second = run_json(suite, "--max-regression", "includes=0.1")
    assert second["gate"]["passed"] is False
    assert "variant base fell 0.500 (0.500 → 0.000)" in second["gate"]["failures"][0]
    # An explicit baseline: the bad run against itself passes.
    third = run_json(suite, "--max-regression", "includes=0.1", "--baseline", second["run_id"])
    assert third["gate"]["passed"]
    # compare shows exactly the samples that regressed.
    compared = orjson.loads(keel("compare", first["run_id"], second["run_id"], "--config",
                                 config, "--json").stdout)
    (pair,) = compared["pairs"]
    assert [e["sample_id"] for e in pair["regressed"]] == ["s0", "s2", "s4"]
    assert pair["graders"]["includes"]["diff"] == -0.5
    text = keel("compare", first["run_id"], second["run_id"], "--config", config).output
    assert "3 regressed" in text and "question 0 about answer0" in text and "Paris" in text


def test_usage_errors_exit_2(env):
    tmp_path, config, suite = env
    result = keel("run", suite, "--fail-under", "nosuch=0.5", "--no-progress")
    assert result.exit_code == 2 and "no grader 'nosuch'" in result.output
    assert keel("run", suite, "--fail-under", "oops").exit_code == 2
    assert keel("show", "ffffffff", "--config", config).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: d.jsonl\nvariants: {a: {model: echo}}\ngraders: []\n")
    result = keel("run", bad)
    assert result.exit_code == 2 and "bad.yaml: graders" in result.output


def test_export_csv_and_jsonl(env):
    tmp_path, config, suite = env
    run_id = run_json(suite)["run_id"]
    out = tmp_path / "run.csv"
    assert keel("export", run_id, "--config", config, "--format", "csv", "-o", out).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 6
    first = next(r for r in rows if r["sample_id"] == "s0")
    assert first["input"] == "question 0 about answer0" and first["ideal"] == "answer0"
    assert first["includes.score"] == "1.0" and first["includes.passed"] == "True"
    lines = keel("export", run_id, "--config", config, "--format", "jsonl").stdout.splitlines()
    records = [orjson.loads(line) for line in lines]
    assert len(records) == 6 and records[0]["grades"]["includes"]["score"] in (0.0, 1.0)


def test_html_report_escapes_everything(tmp_path, db_url):  # noqa: F811
    config = write_config(tmp_path, db_url)
    data = tmp_path / "data.jsonl"
    evil = "<script>alert('x')</script>"
    data.write_text(orjson.dumps({"id": "x<b>", "input": evil, "ideal": "<i>"}).decode() + "\n")
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "<evil>", "dataset": str(data), "config": str(config),
        "variants": {"v<1>": {"model": "echo", "prompt": "</pre><img src=x>"}},
        "graders": [{"kind": "includes"}]}))
    run_id = run_json(suite)["run_id"]
    out = tmp_path / "r.html"
    assert keel("report", run_id, "--config", config, "-o", out).exit_code == 0
    page = out.read_text()
    assert "<script>" not in page and "<img" not in page and "<evil>" not in page
    assert "&lt;script&gt;" in page and "v&lt;1&gt;" in page and "x&lt;b&gt;" in page


def test_a_registry_yaml_runs_as_it_is(env):
    tmp_path, config, suite = env
    registry = str(OPENAI_EVALS / "evals" / "test-basic.yaml")
    result = keel("run", registry)
    assert result.exit_code == 2 and "--model" in result.output
    report = run_json(registry, "--model", "fixed-millie", "--config", config,
                      "--eval", "test-includes-ignore-case")
    assert report["suite"] == "test-includes-ignore-case"
    assert report["summary"]["variants"]["fixed-millie"]["graders"]["includes"]["n"] == 3
    both = run_json(registry, "--model", "echo", "--config", config)
    assert [r["suite"] for r in both] == ["test-fuzzy-match", "test-includes",
                                          "test-includes-ignore-case"]
