"""Model-graded specs: the registry's own fact.yaml and closedqa.yaml load, fill and parse."""

from __future__ import annotations

import pytest
import yaml

from keel.errors import ConfigError
from keel.evals.graders.modelgraded_spec import (
    fill,
    load_spec,
    parse_choice,
    parse_spec,
    placeholders,
    with_answer_prompt,
)
from tests.evals.graders.helpers import SPECS

FACT, CLOSEDQA = SPECS / "fact.yaml", SPECS / "closedqa.yaml"


def test_the_shared_specs_load_as_published():
    fact = load_spec(FACT)
    assert fact.name == "fact"
    assert fact.choice_strings == ("A", "B", "C", "D", "E")
    assert fact.choice_scores is None and fact.eval_type is None
    assert fact.input_outputs == {"input": "completion"}
    assert placeholders(list(fact.prompt)) == {"input", "ideal", "completion"}

    closedqa = load_spec(CLOSEDQA)
    assert closedqa.choice_strings == ("Y", "N")
    assert closedqa.choice_scores == {"Y": 1.0, "N": 0.0}
    assert closedqa.eval_type == "cot_classify"
    assert placeholders(list(closedqa.prompt)) == {"input", "completion", "criteria"}


@pytest.mark.parametrize("name,path", [("fact", FACT), ("closedqa", CLOSEDQA)])
def test_bundled_specs_equal_the_registry_files(name, path):
    assert load_spec(name) == load_spec(path)
    assert load_spec(name).prompt[0]["content"] == yaml.safe_load(path.read_text())[name]["prompt"]


def test_filling_the_fact_prompt():
    spec = load_spec(FACT)
    [message] = fill(list(spec.prompt), {"input": "Capital of {France}?", "ideal": "Paris",
                                         "completion": "It is Paris."})
    content = message["content"]
    assert message["role"] == "user"
    assert "[Question]: Capital of {France}?\n" in content  # braces in values are left alone
    assert "[Expert]: Paris\n" in content and "[Submission]: It is Paris.\n" in content
    assert "{" not in content.replace("{France}", "")


def test_filling_closedqa_needs_criteria():
    spec = load_spec(CLOSEDQA)
    with pytest.raises(KeyError, match=r"\{criteria\}"):
        fill(list(spec.prompt), {"input": "q", "completion": "a"})
    [message] = fill(list(spec.prompt), {"input": "q", "completion": "a",
                                         "criteria": "conciseness: Is it concise?"})
    assert "[Criterion]: conciseness: Is it concise?" in message["content"]


def test_answer_prompt_names_the_choices():
    spec = load_spec(FACT)
    [message] = with_answer_prompt(list(spec.prompt), "cot_classify", spec.choice_strings)
    assert message["content"].startswith(spec.prompt[0]["content"])
    assert '"A" or "B" or "C" or "D" or "E"' in message["content"]
    assert message["content"].endswith("Reasoning:")


ABCDE = "ABCDE"


@pytest.mark.parametrize("text,eval_type,choice", [
    ("The submission adds details.\nB\nB", "cot_classify", "B"),
    ("Reasoning...\n(C)", "cot_classify", "C"),
    ("A submission that adds facts.\nSo the answer is: D.", "cot_classify", "D"),
    ("**E**", "cot_classify", "E"),
    ("Reasoning mentions (A) first.\nThen concludes (B) is right, because", "cot_classify", "B"),
    ("C\nBecause the details match.", "classify_cot", "C"),
    ("D", "classify", "D"),
    ("I cannot decide.", "cot_classify", "__invalid__"),
    ("", "cot_classify", "__invalid__"),
    ("a thing and a fact", "cot_classify", "__invalid__"),  # the article "a" is not choice A
])
def test_parse_choice_fact(text, eval_type, choice):
    assert parse_choice(text, ABCDE, eval_type) == choice


@pytest.mark.parametrize("text,choice", [
    ("The submission is correct.\nY\nY", "Y"),
    ("Step 1: ...\nN", "N"),
    ("Not really.\nno", "__invalid__"),  # one-letter choices are case-sensitive
])
def test_parse_choice_closedqa(text, choice):
    assert parse_choice(text, "YN", "cot_classify") == choice


def test_multi_letter_choices_match_in_any_case():
    assert parse_choice("Overall...\nyes", ["Yes", "No"], "cot_classify") == "Yes"


def test_bad_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="choice_strings"):
        parse_spec("x: {prompt: hi}", "x")
    with pytest.raises(ConfigError, match="no score for"):
        parse_spec("x: {prompt: hi, choice_strings: AB, choice_scores: {A: 1}}", "x")
    with pytest.raises(ConfigError, match="not a bundled spec"):
        load_spec(str(tmp_path / "nope.yaml"))
