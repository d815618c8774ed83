"""Local engine pieces that need no model: JSON budget tracking, grammars' helpers, stops."""

from __future__ import annotations

import json
import subprocess
import sys

from keel.providers.local.decode import StopFilter
from keel.providers.local.json_mode import JsonBudget, closing_bias, minimal_instance


def test_importing_the_provider_does_not_import_llama_cpp():
    code = "import sys, keel.providers.local; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_budget_tracks_open_structure():
    budget = JsonBudget(max_tokens=50)
    budget.feed('{"a":[1,{"b":"x')
    assert budget.stack == ["{", "[", "{"] and budget.in_string and not budget.in_key
    budget.feed('y"}],"')
    assert budget.stack == ["{"] and budget.in_string and budget.in_key
    budget.feed('k":"\\"}"}')
    assert budget.stack == [] and not budget.in_string


def test_budget_asks_to_close_when_the_reserve_is_reached():
    budget = JsonBudget(max_tokens=20, reserve=5)
    budget.feed('{"a":"')
    assert not budget.must_close(used=5)
    assert budget.must_close(used=20 - budget.closing_cost() - 5)


def test_budget_on_brace_gate_ignores_plain_text():
    budget = JsonBudget(max_tokens=3, gate_on_brace=True)
    budget.feed("Hello")
    assert not budget.must_close(used=3)


def test_closing_bias_prefers_closers_and_respects_strings():
    pieces = ["}", '"', '"}', "]}", ",", '""', "cat", ":", '":']
    outside, inside = closing_bias(pieces)
    assert outside[3] > outside[0] > outside[4] > outside[5] > outside[6]
    assert 1 not in outside and 2 not in outside  # a quote outside a string opens one
    assert inside[2] > inside[1] and inside[8] > inside[1]
    assert 0 not in inside and 3 not in inside  # inside a string `}` is just a character


def test_minimal_instance_is_small_and_valid():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "kind": {"enum": ["long-name", "a"]},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1},
            "extra": {"type": "string"},
        },
        "required": ["name", "kind", "tags"],
        "$defs": {"tag": {"type": "integer", "minimum": 3}},
    }
    assert minimal_instance(schema) == {"name": "aa", "kind": "a", "tags": [3]}
    assert json.dumps(minimal_instance({"anyOf": [{"type": "object"}, {"type": "null"}]})) == "{}"


def test_stop_filter_holds_back_partial_stops():
    stops = StopFilter(["END"])
    assert stops.push("abc E") == ("abc ", False)
    assert stops.push("N") == ("", False)
    assert stops.push("D more") == ("", True)
    stops = StopFilter(["END"])
    assert stops.push("xE") == ("x", False)
    assert stops.flush() == "E"


def test_missing_extra_is_a_config_error_naming_it(monkeypatch):
    import pytest

    from keel.errors import ConfigError
    from keel.providers.local.model import import_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(ConfigError, match=r"pip install 'keel-llm\[local\]'"):
        import_llama_cpp()


def _model_free_planner():
    """A planner whose model callables fail the test if `check` reaches them."""
    from keel.providers.local.request import Planner, SamplingDefaults

    def untouchable(*_):
        raise AssertionError("check must not format, tokenise or count")

    return Planner(
        n_ctx=4096, n_vocab=100, defaults=SamplingDefaults(0.2, 0.9, 40, 0.05, 1.1),
        format_prompt=untouchable, tokenize=untouchable, count_tokens=untouchable,
    )


_WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def test_check_reads_only_the_body():
    import pytest

    from keel.errors import InvalidRequest, UnsupportedParameter

    planner = _model_free_planner()
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    planner.check({**ask, "max_tokens": 10, "temperature": 0.5, "logit_bias": {"5": 1}})
    with pytest.raises(UnsupportedParameter) as caught:
        planner.check({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert caught.value.param == "messages[0].content[0]"
    with pytest.raises(InvalidRequest) as caught:
        planner.check({**ask, "max_tokens": 0})
    assert caught.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as caught:
        planner.check({**ask, "logit_bias": {"100": 1}})
    assert caught.value.param == "logit_bias"


def test_stop_with_json_output_is_refused_not_ignored():
    import pytest

    from keel.errors import UnsupportedParameter

    planner = _model_free_planner()
    ask = {"messages": [{"role": "user", "content": "hi"}], "stop": ["END"]}
    forced = {**ask, "tools": [_WEATHER], "tool_choice": "required"}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    for body in ({**ask, "response_format": {"type": "json_object"}},
                 {**ask, "response_format": json_schema}, forced):
        with pytest.raises(UnsupportedParameter) as caught:
            planner.check(body)
        assert caught.value.param == "stop" and caught.value.status == 400
        assert "remove stop" in caught.value.message
    # Text answers honour stop: plain, and tool_choice "auto" (a text answer is cut there).
    planner.check(ask)
    planner.check({**ask, "tools": [_WEATHER]})
    planner.check({**ask, "stop": [""], "response_format": {"type": "json_object"}})  # no stop at all


def test_one_usage_summer():
    from keel.providers.shapes import add_usage

    total = {}
    add_usage(total, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    add_usage(total, None)
    add_usage(total, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    assert total == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_local_responses_come_from_the_shared_builder():
    from keel.providers.local.response import Envelope, tool_call
    from tests.openai_schema import assert_valid

    env = Envelope("smollm2", "fp_0123456789")
    call = tool_call('{"name":"weather","arguments":{"city":"Oslo"}}', ("weather",))
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    done = env.completion("", "stop", call, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    assert_valid("CreateChatCompletionResponse", done)
    assert done["choices"][0]["finish_reason"] == "tool_calls"
    # A call that closing mode finished early says so: its values were cut short.
    cut = env.completion("", "length", call, done["usage"])
    assert cut["choices"][0]["finish_reason"] == "length" and cut["choices"][0]["message"]["tool_calls"]
    text = env.completion("Hi", "stop", None, done["usage"])
    assert text["id"] == done["id"] and text["choices"][0]["message"]["content"] == "Hi"
    assert_valid("CreateChatCompletionStreamResponse", env.chunk({"content": "x"}))
    assert_valid("CreateChatCompletionStreamResponse", env.usage_chunk(done["usage"]))
