"""numeric: the first or last number of the output against the ideal, with tolerance."""

from __future__ import annotations

import pytest

from keel.evals.graders import make_grader
from keel.evals.graders.numeric import numbers
from tests.evals.graders.helpers import output, sample


def test_numbers_reads_separators_signs_decimals_and_exponents():
    assert numbers("Total: 1,234.5 units, then -3 and +2, .5, 6e3, x-7") == \
        [1234.5, -3.0, 2.0, 0.5, 6000.0, 7.0]


async def run(text, ideal, **options):
    return await make_grader("numeric", None, options, None).grade(
        sample(ideal=ideal), output(text))


@pytest.mark.parametrize("text,ideal,options,passed", [
    ("3 apples plus 4 apples is 7 apples", "7", {}, True),           # last number by default
    ("3 apples plus 4 apples is 7 apples", "7", {"pick": "first"}, False),
    ("The answer is 3.14159", "3.14", {"abs_tol": 0.01}, True),
    ("The answer is 3.14159", "3.14", {}, False),
    ("About 1,050 people", "1000", {"rel_tol": 0.05}, True),
    ("About 1,100 people", "1000", {"rel_tol": 0.05}, False),
    ("It is 12", ["11", "12"], {}, True),
])
async def test_numeric(text, ideal, options, passed):
    assert (await run(text, ideal, **options)).passed is passed


async def test_details_and_no_number():
    grade = await run("It is 12.5", "12")
    assert grade.details == {"extracted": 12.5, "expected": [12.0], "difference": 0.5}
    none = await run("I don't know", "12")
    assert not none.passed and none.details["problem"] == "no number in the output"


async def test_an_ideal_that_is_no_number_is_an_error():
    grade = await run("12", "twelve")
    assert grade.label == "__error__"
