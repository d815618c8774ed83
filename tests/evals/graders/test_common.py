"""What every grader shares: failures become grades, and JSON is found in prose."""

from __future__ import annotations

import pytest

from keel.evals.graders import make_grader
from keel.evals.graders.common import find_json, transcript
from tests.evals.graders.helpers import ScriptedJudge, output, sample


async def test_an_output_without_text_grades_as_error():
    grade = await make_grader("exact", None, {}, None).grade(
        sample(), output(None, error={"message": "upstream 502"}))
    assert (grade.score, grade.passed, grade.label) == (0.0, False, "__error__")
    assert grade.details["output_error"] == {"message": "upstream 502"}


@pytest.mark.parametrize("kind", ["fact", "rubric", "rag"])
async def test_a_judge_that_raises_grades_as_error_not_a_crash(kind):
    judge = ScriptedJudge(*[RuntimeError("judge down")] * 3)
    grade = await make_grader(kind, None, {}, judge).grade(
        sample(context="Paris is the capital of France."), output("Paris"))
    assert (grade.score, grade.passed, grade.label) == (0.0, False, "__error__")
    assert "judge down" in grade.details["error"]


async def test_a_reply_that_is_not_a_completion_grades_as_error():
    judge = ScriptedJudge({"unexpected": True})
    grade = await make_grader("fact", None, {}, judge).grade(sample(), output("Paris"))
    assert grade.label == "__error__" and "not a chat completion" in grade.details["error"]


def test_find_json_whole_fenced_and_embedded():
    assert find_json('{"a": 1}') == {"a": 1}
    assert find_json('Here:\n```json\n{"a": 2}\n```\nDone.') == {"a": 2}
    assert find_json('Sure! {"a": {"b": [1, 2]}} hope that helps {') == {"a": {"b": [1, 2]}}
    with pytest.raises(ValueError):
        find_json("no json { here")


def test_transcript_renders_chat_like_openai_evals():
    assert transcript([{"role": "user", "content": "Hi"}]) == "Hi"
    text = transcript([{"role": "system", "content": "Be brief."},
                       {"role": "system", "name": "example_user", "content": "2+2?"},
                       {"role": "user", "content": "3+3?"}])
    assert text == "Be brief.\nExample user: 2+2?\nUser: 3+3?"
