"""Suite YAML: what parses, what fails (naming file and field), and the requests it builds."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError
from keel.evals.base import Sample
from keel.evals.suite import build_body, build_messages, load_suite, parse_suite

MINIMAL = {"name": "s", "dataset": "d.jsonl", "variants": {"a": {"model": "echo"}},
           "graders": [{"kind": "exact"}]}


def test_defaults_and_list_of_variants():
    suite = parse_suite({**MINIMAL, "variants": [{"name": "a", "model": "echo"},
                                                  {"name": "b", "model": "echo",
                                                   "prompt": "Be brief."}]})
    assert list(suite.variants) == ["a", "b"]
    assert suite.variants["b"].prompt.system == "Be brief."
    assert (suite.concurrency, suite.repeats, suite.retries) == (8, 1, 2)
    assert suite.judge.model == "smollm2"
    assert suite.graders[0].label == "exact" and suite.graders[0].options == {}


def test_grader_options_pass_through():
    suite = parse_suite({**MINIMAL, "graders": [{"kind": "regex", "name": "r", "pattern": "x"}]})
    assert suite.graders[0].options == {"pattern": "x"}


@pytest.mark.parametrize("change, expected", [
    ({"concurency": 4}, "concurency: unknown field"),
    ({"variants": {"a": {"model": "echo", "temprature": 0}}}, "variants.a.temprature: unknown"),
    ({"variants": {"a": {"model": "echo", "params": {"model": "x"}}}}, "set by the suite"),
    ({"variants": {}}, "at least one variant"),
    ({"variants": [{"model": "echo"}]}, "needs a `name`"),
    ({"graders": []}, "graders"),
    ({"graders": [{"kind": "exact"}, {"kind": "exact"}]}, "two graders are named 'exact'"),
    ({"repeats": 0}, "repeats"),
    ({"variants": {"a": {"model": "echo", "prompt": {"messages": [{"content": "x"}]}}}},
     "needs a role"),
])
def test_errors_name_the_file_and_field(tmp_path, change, expected):
    path = tmp_path / "bad-suite.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**MINIMAL, **change}))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert str(path) in info.value.message and expected in info.value.message


def test_missing_field_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="dataset: Field required"):
        parse_suite({"name": "s", "variants": {"a": {"model": "m"}},
                     "graders": [{"kind": "exact"}]}, tmp_path / "x.yaml")
    path = tmp_path / "y.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_suite(tmp_path / "missing.yaml")


def test_paths_are_relative_to_the_suite(tmp_path):
    suite = parse_suite({**MINIMAL, "config": "keel.yaml"}, tmp_path / "sub" / "suite.yaml")
    assert suite.dataset_path() == (tmp_path / "sub" / "d.jsonl").resolve()
    assert suite.config_path() == (tmp_path / "sub" / "keel.yaml").resolve()
    assert parse_suite({**MINIMAL, "dataset": "support@abc"}).dataset_path() is None


SAMPLE = Sample(id="1", input=[{"role": "user", "content": "How do I reset {it}?"}],
                ideal="Settings", context=["Go to Settings."], metadata={"topic": {"x": "pw"}})


def test_system_prompt_goes_first_and_params_ride_along():
    suite = parse_suite({**MINIMAL, "variants": {"a": {
        "model": "echo", "prompt": "Topic {metadata.topic.x}.", "params": {"temperature": 0}}}})
    body = build_body(suite.variants["a"], SAMPLE)
    assert body["model"] == "echo" and body["temperature"] == 0
    assert body["messages"] == [{"role": "system", "content": "Topic pw."},
                                {"role": "user", "content": "How do I reset {it}?"}]


def test_messages_template_fills_placeholders_and_leaves_other_braces():
    suite = parse_suite({**MINIMAL, "variants": {"a": {"model": "echo", "prompt": {
        "system": "Use the context.",
        "messages": [{"role": "user", "content": "Context: {context}\nQ: {input} {json}"}]}}}})
    messages = build_messages(suite.variants["a"], SAMPLE)
    assert messages[0] == {"role": "system", "content": "Use the context."}
    assert messages[1]["content"] == "Context: Go to Settings.\nQ: How do I reset {it}? {json}"


def test_the_example_suite_and_registry_file_parse():
    from pathlib import Path

    from keel.evals.registry import load_registry_suites

    examples = Path(__file__).resolve().parents[2] / "examples" / "evals"
    suite = load_suite(examples / "support-bot.yaml")
    assert list(suite.variants) == ["baseline", "concise"]
    assert [g.kind for g in suite.graders] == ["includes", "regex", "fact"]
    assert suite.dataset_path().is_file() and suite.config_path().is_file()
    registry = load_registry_suites(examples / "registry" / "evals" / "support-faq.yaml",
                                    "support-bot")
    assert [s.graders[0].kind for s in registry] == ["includes", "classify"]
