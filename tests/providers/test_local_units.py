"""Local engine pieces that need no model: JSON budget tracking, grammars' helpers, stops."""

from __future__ import annotations

import json
import subprocess
import sys

from keel.providers.local_decode import StopFilter
from keel.providers.local_json import JsonBudget, closing_bias, minimal_instance


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
    from keel.providers.local_model import import_llama_cpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(ConfigError, match=r"pip install 'keel-llm\[local\]'"):
        import_llama_cpp()
