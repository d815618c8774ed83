"""make_grader: kinds are found through keel.plugins, options are checked strictly."""

from __future__ import annotations

import pytest

from keel import plugins
from keel.errors import ConfigError
from keel.evals.graders import make_grader

# What each kind needs to be built at all.
REQUIRED = {"regex": {"pattern": "x"}, "json_schema": {"schema": {"type": "object"}},
            "classify": {"spec": "closedqa"}, "python": {"function": "math:isclose"}}


@pytest.mark.parametrize("kind", sorted(plugins.available("keel.graders")))
def test_every_builtin_kind_builds_and_describes_itself(kind):
    grader = make_grader(kind, None, REQUIRED.get(kind, {}), judge=None)
    assert grader.name == kind  # name defaults to the kind
    assert type(grader).kind == kind
    described = grader.describe()
    assert described["kind"] == kind and described["name"] == kind
    assert isinstance(described["options"], dict)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown grader kind 'exakt'.*exact"):
        make_grader("exakt", None, {}, None)


def test_unknown_option_is_an_error_naming_grader_and_field():
    with pytest.raises(ConfigError, match=r"grader 'strict' \(exact\): case_sensitiv: unknown"):
        make_grader("exact", "strict", {"case_sensitiv": True}, None)


def test_bad_option_value_says_what_was_expected():
    with pytest.raises(ConfigError, match="threshold"):
        make_grader("similarity", None, {"threshold": 2}, None)


def test_model_graded_describe_carries_judge_model_and_prompt():
    described = make_grader("fact", "facts", {"model": "judge-big"}, None).describe()
    assert described["judge_model"] == "judge-big"
    assert "[Expert]: {ideal}" in described["prompt"][0]["content"]
    assert described["choice_scores"] == {"A": 0.5, "B": 0.5, "C": 1.0, "D": 0.0, "E": 1.0}


def test_the_suite_judge_model_is_the_default_model():
    assert make_grader("fact", None, {}, None, judge_model="big").options.model == "big"
    own = make_grader("fact", None, {"model": "mine"}, None, judge_model="big")
    assert own.options.model == "mine"
    assert make_grader("exact", None, {}, None, judge_model="big").describe()["options"] == \
        {"case_sensitive": False, "strip": True, "prefix": False}
