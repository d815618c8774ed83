"""Issue 7, defect 11: a registry eval cannot run away. Answers are capped (512 tokens unless the
eval or `--max-tokens` says otherwise), `--max-samples`, `--temperature` and `--seed` reach the
requests (of suites too), and a judge prompt that overflows the judge's context says so in the
grade of that sample and in the run's report. All on fake models, with a registry built in
tmp_path."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import orjson
import pytest
import yaml

from keel.errors import InvalidRequest
from keel.evals.graders.bundled_specs import FACT
from keel.evals.graders.classify import ClassifyGrader, ClassifyOptions
from keel.evals.registry import DEFAULT_MAX_TOKENS
from tests.evals.graders.helpers import ScriptedJudge, output, sample
from tests.evals.support import write_config, write_suite
from tests.evals.test_eval_cli import keel, run_json

LONG = 600  # words (the fake's tokens) in a long sample's question, which `echo` answers with
MATCH = "evals.elsuite.basic.match:Match"
CLASSIFY = "evals.elsuite.modelgraded.classify:ModelBasedClassify"


def write_registry(root) -> Path:
    """evals/limits.yaml with three evals over one dataset: one short sample, then long ones."""
    (root / "evals").mkdir(parents=True)
    (root / "data" / "limits").mkdir(parents=True)
    (root / "modelgraded").mkdir()
    (root / "modelgraded" / "fact.yaml").write_text(FACT)
    words = " ".join(f"w{i}" for i in range(LONG))
    samples = [{"id": "short", "input": [{"role": "user", "content": "short question"}],
                "ideal": "short"}]
    samples += [{"id": f"long{i}", "input": [{"role": "user", "content": f"{i} {words}"}],
                 "ideal": "long"} for i in range(3)]
    (root / "data" / "limits" / "samples.jsonl").write_text(
        "".join(orjson.dumps(s).decode() + "\n" for s in samples))
    data = {"samples_jsonl": "limits/samples.jsonl"}
    evals = {
        "limits-match": {"id": "limits-match.dev.v0"},
        "limits-match.dev.v0": {"class": MATCH, "args": data},
        "limits-capped": {"id": "limits-capped.dev.v0"},
        "limits-capped.dev.v0": {"class": MATCH, "args": {**data, "max_tokens": 50}},
        "limits-fact": {"id": "limits-fact.dev.v0"},
        "limits-fact.dev.v0": {"class": CLASSIFY, "args": {**data, "modelgraded_spec": "fact"}},
    }
    path = root / "evals" / "limits.yaml"
    path.write_text(yaml.safe_dump(evals))
    return path


@pytest.fixture
def env(tmp_path):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'keel.db'}")
    registry = write_registry(tmp_path / "registry")
    return tmp_path, config, registry


def shown(run_id: str, config) -> dict:
    result = keel("show", run_id, "--config", config, "--json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def tokens_by_sample(run: dict) -> dict[str, int]:
    return {r["sample_id"]: r["completion_tokens"] for r in run["results"]}


def test_registry_answers_are_capped_by_default(env):
    _, config, registry = env
    report = run_json(registry, "--model", "echo", "--config", config, "--eval", "limits-match")
    run = shown(report["run_id"], config)
    assert run["config"]["variants"]["echo"]["params"] == {"temperature": 0,
                                                           "max_tokens": DEFAULT_MAX_TOKENS}
    found = tokens_by_sample(run)
    assert found["short"] == 2 and found["long0"] == DEFAULT_MAX_TOKENS == 512


def test_the_evals_max_tokens_then_the_flags_win(env):
    _, config, registry = env
    report = run_json(registry, "--model", "echo", "--config", config, "--eval", "limits-capped")
    assert tokens_by_sample(shown(report["run_id"], config))["long0"] == 50
    report = run_json(registry, "--model", "echo", "--config", config, "--eval", "limits-capped",
                      "--max-tokens", "7", "--temperature", "0.5", "--seed", "3")
    run = shown(report["run_id"], config)
    assert run["config"]["variants"]["echo"]["params"] == {"temperature": 0.5, "max_tokens": 7,
                                                           "seed": 3}
    assert tokens_by_sample(run)["long0"] == 7


def test_max_samples_keeps_the_first_n(env):
    _, config, registry = env
    report = run_json(registry, "--model", "echo", "--config", config, "--eval", "limits-match",
                      "--max-samples", "2")
    assert report["cells_run"] == 2
    run = shown(report["run_id"], config)
    assert sorted(tokens_by_sample(run)) == ["long0", "short"]
    assert run["config"]["dataset"]["max_samples"] == 2
    text = keel("show", report["run_id"], "--config", config).output
    assert "--max-samples 2" in text


def test_a_judge_prompt_that_cannot_fit_says_so_per_sample(env):
    tmp_path, config, registry = env
    result = keel("run", registry, "--model", "echo", "--judge-model", "judge-small",
                  "--config", config, "--eval", "limits-fact", "--no-progress")
    assert result.exit_code == 0, result.output
    # The run's own report names each sample whose judge prompt overflowed, and why.
    assert "3 answers or grades failed" in result.output
    line = "long1 · echo · fact: __error__: judge prompt too long for judge-small ("
    assert line in result.output
    run_id = orjson.loads(keel("list", "--config", config, "--json").stdout)[0]["id"]
    run = shown(run_id, config)
    grades = {r["sample_id"]: r["grades"]["fact"] for r in run["results"]}
    assert grades["short"]["label"] != "__error__"
    # 600 words of question and 512 of answer quoted in the spec's prompt: past 1,000.
    for name in ("long0", "long1", "long2"):
        assert grades[name]["label"] == "__error__" and grades[name]["score"] == 0
        reason = grades[name]["details"]["error"]
        assert re.fullmatch(r"judge prompt too long for judge-small \(\d+ tokens > context 1000\)",
                            reason), reason
    assert run["summary"]["variants"]["echo"]["graders"]["fact"]["errors"] == 3
    report = run_json(registry, "--model", "echo", "--judge-model", "judge-small",
                      "--config", config, "--eval", "limits-fact")
    assert [p["sample_id"] for p in report["problems"]] == ["long0", "long1", "long2"]
    samples = keel("show", run_id, "--config", config, "--samples").output
    assert "__error__: judge prompt too long" in " ".join(samples.split())
    out = tmp_path / "run.csv"
    assert keel("export", run_id, "--config", config, "--format", "csv", "-o", out).exit_code == 0
    rows = {r["sample_id"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows["long0"]["fact.error"].startswith("judge prompt too long for judge-small")
    assert rows["short"]["fact.error"] == ""


_LOCAL_TOO_LONG = ("the messages take 4500 tokens, more than the local model's context of "
                   "4096 tokens leaves room for; shorten them")
_LOCAL_NO_ROOM = ("the messages take 3800 tokens and max_tokens asks for 512 more, beyond the "
                  "local model's context of 4096 tokens; at most 296 fit")
_OPENAI = ("This model's maximum context length is 8192 tokens. However, your messages "
           "resulted in 9000 tokens.")


@pytest.mark.parametrize(("message", "reason"), [
    (_LOCAL_TOO_LONG, "(4500 tokens > context 4096)"),
    (_LOCAL_NO_ROOM, "(3800 tokens + max_tokens 512 > context 4096)"),
    (_OPENAI, f"({_OPENAI})"),  # another provider's wording is quoted as it is
])
async def test_the_judges_context_error_becomes_the_grades_reason(message, reason):
    judge = ScriptedJudge(InvalidRequest(message, code="context_length_exceeded"))
    grader = ClassifyGrader("fact", ClassifyOptions(spec="fact", choice_scores={
        c: 1.0 for c in "ABCDE"}, model="smollm2"), judge)
    grade = await grader.grade(sample(), output("Paris"))
    assert grade.label == "__error__" and grade.score == 0
    assert grade.details["error"] == f"judge prompt too long for smollm2 {reason}"


async def test_other_judge_errors_keep_their_message():
    judge = ScriptedJudge(InvalidRequest("fake: scripted error 400", code="fake_error"))
    grader = ClassifyGrader("fact", ClassifyOptions(spec="fact", choice_scores={
        c: 1.0 for c in "ABCDE"}), judge)
    grade = await grader.grade(sample(), output("Paris"))
    assert grade.label == "__error__" and grade.details["error"] == "fake: scripted error 400"


def test_suites_take_the_overrides_too(tmp_path):
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'keel.db'}")
    suite = write_suite(tmp_path, config, n=6,
                        variants={"base": {"model": "echo", "params": {"max_tokens": 100}}})
    report = run_json(suite, "--max-samples", "3", "--max-tokens", "1", "--seed", "9")
    assert report["cells_run"] == 3
    run = shown(report["run_id"], config)
    assert run["config"]["variants"]["base"]["params"] == {"max_tokens": 1, "seed": 9}
    # "question 0 about answer0" cut to one word no longer includes its ideal.
    assert set(tokens_by_sample(run).values()) == {1}
    assert run["summary"]["variants"]["base"]["graders"]["includes"]["mean"] == 0
