"""rag: faithfulness, context relevance and answer relevance through a scripted judge."""

from __future__ import annotations

import json

import pytest

from keel.evals.graders import make_grader
from tests.evals.graders.helpers import ScriptedJudge, output, sample

CONTEXT = ["Paris is the capital of France.", "Bananas are yellow."]
FAITHFUL = json.dumps({"claims": [
    {"claim": "Paris is the capital", "reasoning": "passage 1", "supported": True},
    {"claim": "It has 30 million people", "reasoning": "not in context", "supported": False}]})
RELEVANT = json.dumps({"passages": [
    {"index": 1, "reasoning": "about Paris", "relevant": True},
    {"index": 2, "reasoning": "fruit", "relevant": False}]})
ANSWERS = json.dumps({"reasoning": "it answers", "score": 1})


async def test_all_three_metrics_and_their_mean():
    judge = ScriptedJudge(FAITHFUL, RELEVANT, ANSWERS)
    grader = make_grader("rag", None, {}, judge)
    grade = await grader.grade(sample(context=CONTEXT), output("Paris; 30 million people."))
    metrics = grade.details["metrics"]
    assert metrics["faithfulness"]["score"] == 0.5
    assert metrics["faithfulness"]["claims"][1]["supported"] is False
    assert metrics["context_relevance"]["score"] == 0.5
    assert metrics["answer_relevance"] == {"score": 1.0, "reasoning": "it answers"}
    assert grade.score == pytest.approx(2 / 3) and grade.passed is False
    first = judge.requests[0]
    assert first["response_format"]["json_schema"]["name"] == "faithfulness"
    user = first["messages"][1]["content"]
    assert "[1] Paris is the capital of France.\n\n[2] Bananas are yellow." in user
    assert "[Answer]\nParis; 30 million people." in user


async def test_context_comes_from_citations_and_metrics_are_chosen():
    judge = ScriptedJudge(json.dumps({"claims": [{"claim": "x", "supported": "yes"}]}))
    grader = make_grader("rag", None, {"metrics": ["faithfulness"]}, judge)
    response = {"citations": [{"index": 1, "text": "Retrieved passage."}]}
    grade = await grader.grade(sample(), output("x", response=response))
    assert "[1] Retrieved passage." in judge.prompt
    assert grade.score == 1.0 and grade.passed and len(judge.requests) == 1


async def test_min_aggregate():
    judge = ScriptedJudge(FAITHFUL, ANSWERS)
    grader = make_grader("rag", None, {"metrics": ["faithfulness", "answer_relevance"],
                                       "aggregate": "min"}, judge)
    grade = await grader.grade(sample(context=CONTEXT), output("Paris"))
    assert grade.score == 0.5


async def test_no_context_skips_context_metrics():
    judge = ScriptedJudge(json.dumps({"reasoning": "partly", "score": 0.5}))
    grade = await make_grader("rag", None, {}, judge).grade(sample(), output("Paris"))
    assert set(grade.details["skipped"]) == {"faithfulness", "context_relevance"}
    assert grade.score == 0.5 and len(judge.requests) == 1

    only_context = make_grader("rag", None, {"metrics": ["faithfulness"]}, ScriptedJudge())
    error = await only_context.grade(sample(), output("Paris"))
    assert error.label == "__error__" and "no context" in error.details["error"]


async def test_a_refusal_makes_no_claims_and_is_faithful():
    judge = ScriptedJudge('{"claims": []}')
    grade = await make_grader("rag", None, {"metrics": ["faithfulness"]}, judge).grade(
        sample(context=CONTEXT), output("I don't know."))
    assert grade.score == 1.0


async def test_unparseable_judge_output():
    judge = ScriptedJudge("All good!", RELEVANT, "score: high")
    grade = await make_grader("rag", None, {}, judge).grade(sample(context=CONTEXT), output("P"))
    assert set(grade.details["invalid"]) == {"faithfulness", "answer_relevance"}
    assert grade.details["invalid"]["faithfulness"]["judge_answer"] == "All good!"
    assert grade.score == 0.5  # only context_relevance could be read

    garbage = ScriptedJudge("nope", '{"passages": "?"}', "[]")
    bad = await make_grader("rag", None, {}, garbage).grade(sample(context=CONTEXT), output("P"))
    assert (bad.score, bad.passed, bad.label) == (0.0, False, "__invalid__")
