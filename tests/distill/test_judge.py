"""A distilled judge: its training set from a strong judge's grades corrected by people, the
cheap judge's grades beside the strong one's (the fake upstream over a real socket), and
`keel eval calibrate --judges` with numbers worked out by hand for the scripted judges."""

from __future__ import annotations

import click
import orjson
import pytest
import yaml
from click.testing import CliRunner

from keel.cli.distill import distill_group
from keel.cli.evals import eval_group
from keel.cli.main import KeelGroup
from keel.distill import judge as jd
from keel.distill import lineage
from keel.evals import runs
from keel.evals.annotate import Item, parse_grade, save_annotation
from keel.evals.base import Sample
from keel.evals.dataset_store import get_dataset, import_dataset
from keel.evals.graders import make_grader
from keel.providers.fake_server import serve_fake_upstream
from keel.store import open_store
from tests.store.backends import db_url  # noqa: F401  (fixture)

# The strong judge said C (same facts: pass) on s0-s5 and D (disagrees: fail) on s6-s9.
STRONG = ["C"] * 6 + ["D"] * 4
# People: pass/fail on s0-s7 (s5 and s7 contradict the strong judge), a fact letter on s8.
PEOPLE = {0: "pass", 1: "pass", 2: "pass", 3: "pass", 4: "pass", 5: "fail", 6: "fail",
          7: "pass", 8: "C"}


@click.group(cls=KeelGroup)
def root() -> None:
    """Like `keel`."""


root.add_command(distill_group)
root.add_command(eval_group)


def keel(*args):
    return CliRunner().invoke(root, list(map(str, args)), catch_exceptions=False)


@pytest.fixture
def graded_run(tmp_path, db_url):  # noqa: F811
    """(keel.yaml, run id): a run the strong judge graded with `fact`, and people's grades."""
    with serve_fake_upstream() as upstream:
        config = {
            "state_dir": str(tmp_path / "state"), "store": {"url": db_url}, "pipeline": [],
            "providers": {"up": {"kind": "openai", "base_url": upstream}},
            "models": {"strong-judge": {"provider": "up", "model": "fixed:D"},
                       "cheap-judge": {"provider": "up", "model": "fixed:C"}},
        }
        path = tmp_path / "keel.yaml"
        path.write_text(yaml.safe_dump(config))
        store = open_store(db_url)
        try:
            run_id = _strong_run(store)
        finally:
            store.close()
        yield path, run_id


def _strong_run(store) -> str:
    samples = [Sample(id=f"s{i}", input=[{"role": "user", "content": f"question {i}"}],
                      ideal=f"answer {i}") for i in range(10)]
    name, version, _ = import_dataset(store, "qa", samples, "test")
    fact = make_grader("fact", "fact", {"model": "strong-judge"}, None)
    run_id = runs.create_run(store, suite="qa", dataset_name=name, dataset_version=version,
                             config={"graders": {"fact": fact.describe()}}, git_commit=None,
                             keel_version="0")
    runs.write_results(store, run_id, [{
        "variant": "base", "sample_id": f"s{i}", "repeat": 0,
        "output": {"text": f"reply {i}"}, "error": None,
        "grades": {"fact": {"score": 1.0 if label == "C" else 0.0, "passed": label == "C",
                            "label": label, "reasoning": f"reasoning {i}\n{label}",
                            "details": {}}},
        "created_at": 0.0} for i, label in enumerate(STRONG)])
    for i, word in PEOPLE.items():
        save_annotation(store, Item(sample_id=f"s{i}", sample=None, run_id=run_id,
                                    variant="base", repeat=0), parse_grade(word), "ann")
    return run_id


def test_judge_dataset_uses_the_strong_judges_prompts_corrected_by_people(graded_run, db_url,  # noqa: F811
                                                                          tmp_path):
    path, run_id = graded_run
    out = tmp_path / "judge.jsonl"
    result = keel("distill", "judge", "dataset", run_id, "--grader", "fact", "--name",
                  "fact-judge", "--out", out, "--config", path, "--json")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    stats = report["stats"]
    assert (stats["graded"], stats["kept"], stats["human_labels"], stats["human_agreed"],
            stats["dropped_disagreed"]) == (10, 8, 1, 6, 2)
    assert stats["judge_models"] == ["strong-judge"]
    assert sum(s["count"] for s in report["splits"].values()) == 8
    store = open_store(db_url)
    try:
        the_set = lineage.get_set(store, "fact-judge")
        examples = {}
        for split in report["splits"].values():
            _, samples = get_dataset(store, split["dataset"], split["version"])
            examples.update({s.id.split(":")[2]: s for s in samples})
    finally:
        store.close()
    assert the_set["source"]["teacher"] == "strong-judge" and the_set["source"]["runs"] == [run_id]
    assert sorted(examples) == ["s0", "s1", "s2", "s3", "s4", "s6", "s8", "s9"]
    # The prompt is the fact grader's own, filled with the question, the ideal and the answer.
    prompt = " ".join(m["content"] for m in examples["s3"].input)
    assert "question 3" in prompt and "answer 3" in prompt and "reply 3" in prompt
    assert examples["s3"].ideal == "reasoning 3\nC"
    assert examples["s3"].metadata["source"] == "judge+human"
    assert (examples["s8"].ideal, examples["s8"].metadata["source"]) == ("C", "human")
    assert examples["s9"].metadata["source"] == "judge"
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == report["splits"]["train"]["count"]
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)


def test_cheap_judge_calibrated_against_people_and_the_strong_judge(graded_run):
    path, run_id = graded_run
    result = keel("distill", "judge", "grade", run_id, "--grader", "fact", "--judge",
                  "cheap-judge", "--as", "fact-cheap", "--config", path, "--json")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["labels"] == {"C": 10}

    result = keel("eval", "calibrate", run_id, "--judges", "fact", "fact-cheap",
                  "--config", path, "--json")
    assert result.exit_code == 0, result.output
    found = orjson.loads(result.stdout)
    people = {name: {a["kind"]: a for a in found["people"][name]} for name in found["people"]}
    between = {a["kind"]: a for a in found["between"]}
    # Strong vs people, pass/fail on s0-s7: 6 of 8 agree; both said pass 6 times of 8, so
    # chance agreement is (6·6 + 2·2)/64 = 0.625 and kappa (0.75 − 0.625)/0.375 = 1/3.
    strong = people["fact"]["pass/fail"]
    assert (strong["n"], strong["accuracy"]) == (8, 0.75)
    assert strong["kappa"] == pytest.approx(1 / 3)
    # The cheap judge always says C (pass): 6 of 8 agree, which is just chance: kappa 0.
    cheap = people["fact-cheap"]["pass/fail"]
    assert (cheap["n"], cheap["accuracy"], cheap["kappa"]) == (8, 0.75, 0.0)
    # s8, where a person gave a fact letter (C): the strong judge said D, the cheap one C.
    assert people["fact"]["label"]["accuracy"] == 0.0
    assert people["fact-cheap"]["label"]["accuracy"] == 1.0
    # Cheap vs strong over all 10 outputs: 6 agree (the C's), chance 0.6: kappa 0.
    assert (between["label"]["n"], between["label"]["accuracy"]) == (10, 0.6)
    assert between["label"]["kappa"] == pytest.approx(0.0)
    assert between["pass/fail"]["confusion"] == {"pass": {"pass": 6}, "fail": {"pass": 4}}

    text = keel("eval", "calibrate", run_id, "--judges", "fact", "fact-cheap",
                "--config", path).output
    assert "fact-cheap vs people" in text and "fact vs people" in text
    assert "fact-cheap vs fact" in text and "0.33" in text
    result = keel("eval", "calibrate", run_id, "--judges", "fact", "nope", "--config", path)
    assert result.exit_code == 2 and "no grader 'nope'" in result.output


def test_a_deterministic_grader_has_no_judge_to_distil(graded_run, db_url):  # noqa: F811
    _, run_id = graded_run
    store = open_store(db_url)
    try:
        run = runs.get_run(store, run_id)
        with pytest.raises(Exception, match="no grader 'exact'"):
            jd.grader_from_audit(run, "exact", None)
    finally:
        store.close()
