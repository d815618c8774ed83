"""exact, includes, fuzzy_match and regex, with OpenAI evals' comparison rules."""

from __future__ import annotations

import pytest

from keel.evals.graders import make_grader
from keel.evals.graders.match import fuzzy_match, normalize, token_f1
from tests.evals.graders.helpers import output, sample


async def run(kind, text, ideal="Paris", **options):
    return await make_grader(kind, None, options, None).grade(sample(ideal=ideal), output(text))


@pytest.mark.parametrize("text,options,passed", [
    ("Paris", {}, True),
    ("  paris\n", {}, True),                           # case and whitespace ignored by default
    ("paris", {"case_sensitive": True}, False),
    (" Paris", {"strip": False}, False),
    ("Paris, France", {}, False),
    ("Paris, France", {"prefix": True}, True),          # OpenAI evals' Match: starts with
])
async def test_exact(text, options, passed):
    grade = await run("exact", text, **options)
    assert grade.passed is passed and grade.score == float(passed)


async def test_exact_any_of_several_ideals():
    grade = await run("exact", "Lutetia", ideal=["Paris", "Lutetia"])
    assert grade.passed and grade.details["matched"] == "Lutetia"


async def test_no_ideal_is_an_error_grade():
    grade = await make_grader("exact", None, {}, None).grade(sample(ideal=None), output("x"))
    assert grade.label == "__error__" and grade.score == 0


@pytest.mark.parametrize("text,options,passed", [
    ("The capital is Paris.", {}, True),
    ("the capital is PARIS", {}, True),
    ("the capital is PARIS", {"case_sensitive": True}, False),
    ("Lyon", {}, False),
])
async def test_includes(text, options, passed):
    assert (await run("includes", text, **options)).passed is passed


def test_normalize_drops_case_punctuation_articles_and_spaces():
    assert normalize("  The Eiffel-Tower, in  a   city!") == "eiffeltower in city"


@pytest.mark.parametrize("a,b,matched", [
    ("Millie Bobby Brown", "millie bobby brown.", True),
    ("It is Millie Bobby Brown", "Millie Bobby Brown", True),   # output contains ideal
    ("Brown", "Millie Bobby Brown", True),                       # ideal contains output
    ("Winona Ryder", "Millie Bobby Brown", False),
    ("", "Paris", False),
    ("the", "", True),                                           # both normalise to empty
])
def test_fuzzy_match_either_contains_the_other(a, b, matched):
    assert fuzzy_match(a, b) is matched


async def test_fuzzy_match_grader_records_f1():
    grade = await run("fuzzy_match", "Bobby Brown", ideal=["Millie Bobby Brown"])
    assert grade.passed
    assert grade.details["f1"] == pytest.approx(token_f1("Bobby Brown", "Millie Bobby Brown"))
    assert grade.details["f1"] == pytest.approx(0.8)


@pytest.mark.parametrize("text,options,passed", [
    ("Order #12345 confirmed", {"pattern": r"#\d{5}\b"}, True),
    ("Order #123 confirmed", {"pattern": r"#\d{5}\b"}, False),
    ("YES", {"pattern": "yes"}, False),
    ("YES", {"pattern": "yes", "flags": "i"}, True),
    ("yes, sure", {"pattern": "yes", "fullmatch": True}, False),
    ("  yes \n", {"pattern": "yes", "fullmatch": True}, True),
])
async def test_regex(text, options, passed):
    assert (await run("regex", text, **options)).passed is passed


async def test_regex_without_pattern_reads_each_ideal_as_one():
    grade = await run("regex", "about 42 km", ideal=[r"\b4[0-9] ?km"])
    assert grade.passed and grade.details["match"] == "42 km"


async def test_registry_fuzzy_match_samples_grade_their_own_ideals():
    """The evals registry's test_fuzzy_match set: each ideal, answered, passes all three."""
    import json

    from keel.evals.base import Output, Sample
    from tests.evals.graders.helpers import SPECS

    path = SPECS.parent / "data" / "test_fuzzy_match" / "samples.jsonl"
    for i, line in enumerate(path.read_text().splitlines()):
        raw = json.loads(line)
        registry_sample = Sample(id=str(i), input=raw["input"], ideal=raw["ideal"])
        answer = Output(text=f"{raw['ideal'][-1]}.")
        for kind in ("fuzzy_match", "includes"):
            grade = await make_grader(kind, None, {}, None).grade(registry_sample, answer)
            assert grade.passed, (kind, raw["ideal"])
        exact = make_grader("exact", None, {"prefix": True}, None)
        assert (await exact.grade(registry_sample, answer)).passed
