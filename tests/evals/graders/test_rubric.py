"""rubric: anchored scorecard prompt, JSON mode, and robust reading of the judge."""

from __future__ import annotations

import json

import pytest

from keel.evals.graders import make_grader
from keel.evals.graders.rubric import read_scores
from tests.evals.graders.helpers import ScriptedJudge, output, sample

NAMES = ["relevance", "credibility", "correctness"]


def card(**scores):
    return json.dumps({k: {"reasoning": f"{k} because", "score": v} for k, v in scores.items()})


async def test_prompt_is_anchored_and_json_mode_is_asked():
    judge = ScriptedJudge(card(relevance=5, credibility=5, correctness=5))
    grader = make_grader("rubric", None, {"model": "strong"}, judge)
    grade = await grader.grade(sample(context="Paris is France's capital."), output("Paris."))
    request = judge.requests[0]
    assert request["model"] == "strong" and request["temperature"] == 0
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == NAMES
    assert list(schema["properties"]["relevance"]["properties"]) == ["reasoning", "score"]
    prompt = judge.prompt
    for needle in ("[Question]\nWhat is the capital of France?", "[Reference answer]\nParis",
                   "[Context]\nParis is France's capital.", "[Answer to grade]\nParis.",
                   "## relevance", "## credibility", "## correctness",
                   'Example answers to "How long does a refund take?"',
                   '- score 1: "We do not offer refunds."'):
        assert needle in prompt
    assert (grade.score, grade.passed) == (1.0, True)
    assert grade.details["criteria"]["relevance"] == {"score": 5, "reasoning": "relevance because"}


async def test_score_is_mean_of_mapped_criteria_against_threshold():
    judge = ScriptedJudge(card(relevance=5, credibility=3, correctness=4))
    grade = await make_grader("rubric", None, {}, judge).grade(sample(), output("Paris"))
    assert grade.score == pytest.approx((1 + 0.5 + 0.75) / 3)
    assert grade.passed is True  # 0.75 >= 0.75
    assert "credibility: credibility because" in grade.reasoning


async def test_custom_criteria_weights_and_anchors():
    options = {"criteria": [
        {"name": "politeness", "description": "Is it polite?", "weight": 3,
         "anchors": {1: "Go away.", 5: "Happy to help!"}},
        {"name": "brevity", "description": "Is it short?"}], "example_question": None}
    judge = ScriptedJudge(card(politeness=5, brevity=1))
    grade = await make_grader("rubric", None, options, judge).grade(sample(), output("Paris"))
    assert grade.score == pytest.approx(0.75)
    assert "Example answers:\n- score 5: Happy to help!\n- score 1: Go away." in judge.prompt


@pytest.mark.parametrize("text,expected", [
    ('Sure! ```json\n{"relevance": {"reasoning": "ok", "score": 4}}\n```', {"relevance": 4}),
    ('{"scores": {"relevance": 9, "credibility": "3/5", "correctness": 0}}',
     {"relevance": 5, "credibility": 3, "correctness": 1}),  # unwrapped and clamped
    ("Relevance: 4\n**Credibility**: 2/5\ncorrectness score - 5",
     {"relevance": 4, "credibility": 2, "correctness": 5}),
    ('{"Relevance": {"score": 3}} and correctness: 2', {"relevance": 3, "correctness": 2}),
])
def test_read_scores_is_robust(text, expected):
    assert {k: v["score"] for k, v in read_scores(text, NAMES).items()} == expected


async def test_missing_criteria_are_noted():
    judge = ScriptedJudge(card(relevance=5))
    grade = await make_grader("rubric", None, {}, judge).grade(sample(), output("Paris"))
    assert grade.score == 1.0 and grade.details["missing"] == ["credibility", "correctness"]


async def test_unparseable_judge_output_is_invalid():
    judge = ScriptedJudge("I think it is pretty good overall.")
    grade = await make_grader("rubric", None, {}, judge).grade(sample(), output("Paris"))
    assert (grade.score, grade.passed, grade.label) == (0.0, False, "__invalid__")
    assert grade.reasoning == "I think it is pretty good overall."
    assert grade.details["missing"] == NAMES
