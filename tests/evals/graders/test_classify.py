"""classify (any spec) and fact (the bundled fact spec) against a scripted judge."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError
from keel.evals.base import Sample
from keel.evals.graders import make_grader
from tests.evals.graders.helpers import SPECS, ScriptedJudge, output, sample

COQA_LIKE = Sample(
    id="q1", ideal="white",
    input=[{"role": "system", "content": "Read the passage and answer. Passage: ..."},
           {"role": "user", "content": "What color was Cotton?"}])


async def test_fact_fills_the_spec_asks_reproducibly_and_keeps_the_reasoning():
    judge = ScriptedJudge("The submission says white, as does the expert.\nC\nC")
    grader = make_grader("fact", None, {"model": "judge-model"}, judge)
    grade = await grader.grade(COQA_LIKE, output("Cotton was white."))
    request = judge.requests[0]
    assert request["model"] == "judge-model"
    assert request["temperature"] == 0 and request["seed"] == 0
    prompt = judge.prompt
    assert "[Question]: Read the passage and answer. Passage: ...\nUser: What color was Cotton?" \
        in prompt
    assert "[Expert]: white" in prompt and "[Submission]: Cotton was white." in prompt
    assert prompt.endswith("Reasoning:")  # the fact spec has no eval_type: cot prompt appended
    assert (grade.score, grade.passed, grade.label) == (1.0, True, "C")
    assert grade.reasoning.startswith("The submission says white")


@pytest.mark.parametrize("letter,score,passed", [
    ("A", 0.5, False), ("B", 0.5, False), ("C", 1.0, True), ("D", 0.0, False), ("E", 1.0, True)])
async def test_fact_scores(letter, score, passed):
    grade = await make_grader("fact", None, {}, ScriptedJudge(f"...\n{letter}")).grade(
        sample(), output("Paris"))
    assert (grade.score, grade.passed, grade.label) == (score, passed, letter)


async def test_fact_threshold_and_score_overrides():
    options = {"threshold": 0.5, "choice_scores": {"A": 0.25, "B": 0.75, "C": 1, "D": 0, "E": 1}}
    grader = make_grader("fact", None, options, ScriptedJudge("B", "A"))
    superset = await grader.grade(sample(), output("Paris, on the Seine"))
    subset = await grader.grade(sample(), output("Paris"))
    assert (superset.score, superset.passed) == (0.75, True)
    assert (subset.score, subset.passed) == (0.25, False)


async def test_fact_from_the_shared_spec_file_and_classify_eval_type():
    judge = ScriptedJudge("D")
    grader = make_grader("fact", None, {"spec_path": str(SPECS / "fact.yaml"),
                                        "eval_type": "classify"}, judge)
    grade = await grader.grade(sample(), output("Lyon"))
    assert grade.label == "D" and grade.score == 0.0
    assert "with only one of" in judge.prompt and "Reasoning:" not in judge.prompt


async def test_unparseable_judge_output_is_invalid_and_kept():
    judge = ScriptedJudge("I would rather not say.")
    grade = await make_grader("fact", None, {}, judge).grade(sample(), output("Paris"))
    assert (grade.score, grade.passed, grade.label) == (0.0, False, "__invalid__")
    assert grade.reasoning == "I would rather not say."
    assert "no choice among" in grade.details["error"]


async def test_classify_closedqa_with_criteria():
    judge = ScriptedJudge("The answer is right.\nY\nY")
    grader = make_grader("classify", "correct", {
        "spec": str(SPECS / "closedqa.yaml"),
        "args": {"criteria": "correctness: Is the answer correct?"}}, judge)
    grade = await grader.grade(sample(), output("Paris"))
    assert (grade.score, grade.passed, grade.label) == (1.0, True, "Y")
    assert "[Criterion]: correctness: Is the answer correct?" in judge.prompt
    assert "[Task]: What is the capital of France?" in judge.prompt
    # closedqa asks for its own format: nothing is appended after its "Reasoning:"
    assert judge.prompt.endswith("Reasoning:") and "no quotes" not in judge.prompt
    assert grader.describe()["spec"] == "closedqa"


async def test_classify_criteria_may_come_from_sample_metadata():
    judge = ScriptedJudge("N")
    grader = make_grader("classify", None, {"spec": "closedqa"}, judge)
    grade = await grader.grade(sample(metadata={"criteria": "brevity"}), output("Paris"))
    assert grade.label == "N" and "[Criterion]: brevity" in judge.prompt


async def test_classify_missing_placeholder_is_an_error_grade():
    grader = make_grader("classify", None, {"spec": "closedqa"}, ScriptedJudge("Y"))
    grade = await grader.grade(sample(), output("Paris"))
    assert grade.label == "__error__" and "{criteria}" in grade.details["error"]


def test_classify_needs_scores(tmp_path):
    spec = tmp_path / "tone.yaml"
    spec.write_text("tone:\n  prompt: 'Is {completion} polite?'\n  choice_strings: [Yes, No]\n")
    with pytest.raises(ConfigError, match="quote the choice_strings"):
        make_grader("classify", None, {"spec": str(spec)}, None)
    spec.write_text("tone:\n  prompt: 'Is {completion} polite?'\n  choice_strings: ['Yes', 'No']\n")
    with pytest.raises(ConfigError, match="no choice_scores"):
        make_grader("classify", None, {"spec": str(spec)}, None)
    grader = make_grader("classify", None, {"spec": str(spec),
                                            "choice_scores": {"Yes": 1, "No": 0}}, None)
    assert grader.describe()["choice_scores"] == {"Yes": 1.0, "No": 0.0}


async def test_fact_on_a_registry_coqa_sample():
    """A sample from the evals registry's coqa set, as its fact eval grades it."""
    import json

    line = (SPECS.parent / "data" / "coqa" / "samples.jsonl").read_text().splitlines()[0]
    raw = json.loads(line)
    registry_sample = Sample(id="coqa.0", input=raw["input"], ideal=raw["ideal"])
    judge = ScriptedJudge("The submission contradicts the expert.\nD\nD")
    grade = await make_grader("fact", None, {}, judge).grade(registry_sample, output("blue"))
    prompt = judge.prompt
    assert raw["input"][0]["content"][:200] in prompt          # the passage, unprefixed
    assert "User: " + raw["input"][-1]["content"] in prompt    # the question
    assert f"[Expert]: {raw['ideal']}" in prompt
    assert grade.label == "D" and grade.score == 0.0
