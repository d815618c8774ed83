"""python: a user function of (sample, output), sync or async."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError
from keel.evals.graders import make_grader
from tests.evals.graders.helpers import output, sample

MODULE = "tests.evals.graders.user_functions"


async def run(function, text="Paris", **options):
    grader = make_grader("python", None, {"function": f"{MODULE}:{function}", **options}, None)
    return await grader.grade(sample(), output(text))


async def test_bool_result():
    assert (await run("mentions_paris")).passed is True
    grade = await run("mentions_paris", "Lyon")
    assert (grade.score, grade.passed) == (0.0, False)


async def test_number_result_is_clipped_and_thresholded():
    grade = await run("length_score", "Paris")
    assert (grade.score, grade.passed) == (0.5, True)
    assert (await run("length_score", "Paris", threshold=0.6)).passed is False
    long = await run("length_score", "x" * 25)
    assert long.score == 1.0 and long.details["raw_score"] == 2.5


async def test_async_dict_result():
    grade = await run("judged")
    assert (grade.score, grade.passed, grade.label, grade.reasoning) == \
        (0.4, True, "ok", "close enough")
    assert grade.details == {"chars": 5}


async def test_errors_become_error_grades():
    grade = await run("broken")
    assert grade.label == "__error__" and "ZeroDivisionError: oops" in grade.details["error"]
    assert "expected a bool" in (await run("wrong_type")).details["error"]


def test_bad_function_names_fail_at_build_time():
    with pytest.raises(ConfigError, match="cannot import"):
        make_grader("python", None, {"function": f"{MODULE}:nope"}, None)
    with pytest.raises(ConfigError, match="cannot import"):
        make_grader("python", None, {"function": "no_such_module:f"}, None)
    with pytest.raises(ConfigError, match="function"):
        make_grader("python", None, {"function": "not a path"}, None)
