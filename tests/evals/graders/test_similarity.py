"""similarity: cosine to the closest ideal, through the judge's embedder."""

from __future__ import annotations

import pytest

from keel.evals.graders import make_grader
from tests.evals.graders.helpers import ScriptedJudge, output, sample


async def test_best_ideal_cosine_and_threshold():
    # output, ideal 1 (orthogonal), ideal 2 (cosine 0.8)
    judge = ScriptedJudge(vectors=[[1, 0, 0], [0, 1, 0], [0.8, 0.6, 0]])
    grader = make_grader("similarity", None, {"embedder": "e5", "threshold": 0.75}, judge)
    grade = await grader.grade(sample(ideal=["far", "near"]), output("answer"))
    assert judge.embedded == [(["answer", "far", "near"], "e5")]
    assert grade.score == pytest.approx(0.8) and grade.passed
    assert grade.details["closest_ideal"] == "near"


async def test_negative_cosine_clips_to_zero_and_fails():
    judge = ScriptedJudge(vectors=[[1, 0], [-1, 0]])
    grade = await make_grader("similarity", None, {}, judge).grade(sample(), output("x"))
    assert grade.score == 0.0 and not grade.passed
    assert grade.details["cosine"] == pytest.approx(-1.0)


async def test_with_the_fake_embedder_shared_words_score_higher():
    grader = make_grader("similarity", None, {"threshold": 0.6}, ScriptedJudge())
    ideal = "the capital of France is Paris"
    same = await grader.grade(sample(ideal=ideal), output("the capital of France is Paris"))
    other = await grader.grade(sample(ideal=ideal), output("bananas grow on trees"))
    assert same.score == pytest.approx(1.0) and same.passed
    assert other.score < 0.6 and not other.passed
