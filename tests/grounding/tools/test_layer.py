"""The `tools` layer: Keel runs the calls, feeds results back and returns only the answer."""

from __future__ import annotations

import orjson
import pytest

from keel.errors import ConfigError
from keel.grounding.tools.loop import STOPPED
from tests.grounding.tools.scripted import (
    Harness,
    ScriptedProvider,
    calls,
    text,
    tool_results,
)

FUNCTIONS = "tests.grounding.tools.sample_functions"


def py(function: str, **options) -> dict:
    return {"kind": "python", "function": f"{FUNCTIONS}:{function}", **options}


def answer_with_results(body: dict) -> dict:
    return text("results: " + " | ".join(tool_results(body)))


def message(result: dict) -> dict:
    return result["choices"][0]["message"]


async def test_a_tool_call_is_run_and_the_model_answers_from_its_result(tmp_path):
    provider = ScriptedProvider(calls(("add", {"a": 40})), answer_with_results)
    async with Harness(tmp_path, {"add": py("add")}, tool_choice="add") as h:
        result, trace = await h.ask(provider, "what is 40 + 2?")
    assert message(result)["content"] == "results: 42"
    assert "tool_calls" not in message(result)
    assert result["usage"] == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    (run,) = result["tool_runs"]
    assert run["name"] == "add" and run["ok"] and run["arguments"] == '{"a":40}'
    first, second = provider.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["add"]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert second["tool_choice"] == "auto"  # forced once, then the model may answer
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][2] == {"role": "tool", "tool_call_id": "call_0", "content": "42"}
    span = next(s for s in trace.spans if s.name == "tool:add")
    assert span.attrs["ok"] is True and span.attrs["arguments"] == '{"a":40}'
    assert [s.name for s in trace.spans].count("provider") == 2


async def test_several_calls_run_in_parallel(tmp_path):
    two_naps = calls(("nap", {"seconds": 0.3}), ("nap", {"seconds": 0.3}))
    async with Harness(tmp_path, {"nap": py("async_slow")}) as h:
        _, trace = await h.ask(ScriptedProvider(two_naps, answer_with_results))
    a, b = [s for s in trace.spans if s.name == "tool:nap"]
    assert b.start_ms < a.start_ms + a.duration_ms  # b began before a ended


async def test_parallel_off_runs_calls_one_after_the_other(tmp_path):
    two_naps = calls(("nap", {"seconds": 0.05}), ("nap", {"seconds": 0.05}))
    async with Harness(tmp_path, {"nap": py("slow")}, parallel=False) as h:
        _, trace = await h.ask(ScriptedProvider(two_naps, answer_with_results))
    a, b = [s for s in trace.spans if s.name == "tool:nap"]
    assert b.start_ms >= a.start_ms + a.duration_ms


async def test_failures_go_back_to_the_model_as_results(tmp_path):
    bad_round = calls(("broken", {}), ("add", {"a": "many"}), ("nope", {}), ("nap", {"seconds": 1}))
    bad_round["tool_calls"].append(
        {"id": "call_x", "type": "function", "function": {"name": "add", "arguments": "{oops"}})
    provider = ScriptedProvider(bad_round, answer_with_results)
    tools = {"broken": py("broken"), "add": py("add"), "nap": py("async_slow", timeout_s=0.05)}
    async with Harness(tmp_path, tools) as h:
        result, trace = await h.ask(provider)
    errors = [orjson.loads(r)["error"] for r in tool_results(provider.bodies[1])]
    assert "ValueError: the database is down" in errors[0]
    assert errors[1].startswith("invalid arguments: a:")
    assert "no tool named 'nope'" in errors[2] and "add, broken, nap" in errors[2]
    assert "within 0.05 s" in errors[3]
    assert "not valid JSON" in errors[4]
    assert [r["ok"] for r in result["tool_runs"]] == [False] * 5
    assert all(s.attrs["error"] for s in trace.spans if s.name.startswith("tool:"))


async def test_the_loop_stops_after_max_rounds(tmp_path):
    always = calls(("add", {"a": 1}))
    provider = ScriptedProvider(always)
    async with Harness(tmp_path, {"add": py("add")}, max_rounds=2) as h:
        result, _ = await h.ask(provider)
    assert len(provider.bodies) == 3
    assert provider.bodies[-1]["tool_choice"] == "none"
    assert message(result)["content"] == STOPPED.format(rounds=2)
    assert result["choices"][0]["finish_reason"] == "stop" and len(result["tool_runs"]) == 2


async def test_after_max_rounds_a_compliant_model_answers(tmp_path):
    def obey(body):
        return answer_with_results(body) if body.get("tool_choice") == "none" else always
    always = calls(("add", {"a": 1}))
    async with Harness(tmp_path, {"add": py("add")}, max_rounds=1) as h:
        result, _ = await h.ask(ScriptedProvider(obey))
    assert message(result)["content"] == "results: 3"


async def test_long_results_are_cut(tmp_path):
    provider = ScriptedProvider(calls(("greet", {"name": "x" * 500})), answer_with_results)
    async with Harness(tmp_path, {"greet": py("greet")}, result_max_chars=100) as h:
        await h.ask(provider)
    (result,) = tool_results(provider.bodies[1])
    assert result.startswith("hello xxx") and result.endswith("[truncated: 406 more characters]")


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("mixed", [False, True])
async def test_calls_to_client_tools_go_back_to_the_client_untouched(tmp_path, mixed):
    specs = [("add", {"a": 1})] if mixed else []
    provider = ScriptedProvider(calls(*specs, ("get_weather", {})))
    async with Harness(tmp_path, {"add": py("add")}) as h:
        result, trace = await h.ask(provider, tools=[WEATHER], tool_choice="auto")
    assert len(provider.bodies) == 1
    assert [t["function"]["name"] for t in provider.bodies[0]["tools"]] == ["get_weather", "add"]
    names = [c["function"]["name"] for c in message(result)["tool_calls"]]
    assert names[-1] == "get_weather" and result["choices"][0]["finish_reason"] == "tool_calls"
    assert "tool_runs" not in result
    assert not any(s.name.startswith("tool:") for s in trace.spans)


async def test_a_client_answering_its_own_tool_continues_the_loop(tmp_path):
    provider = ScriptedProvider(calls(("add", {"a": 5})), answer_with_results)
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    async with Harness(tmp_path, {"add": py("add")}) as h:
        result, _ = await h.ask(provider, tools=[WEATHER], messages=messages)
    assert message(result)["content"] == "results: sunny | 7"


async def test_unknown_tool_names_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown tool 'nope'.*defines: add"):
        Harness(tmp_path, {"add": py("add")}, tools=["add", "nope"])
    h = Harness(tmp_path, {"add": py("add")}, tool_choice="subtract")
    with pytest.raises(ConfigError, match="'subtract' is not one of this model's tools"):
        await h.layer.start()


async def test_models_share_one_started_tool(tmp_path):
    from keel.grounding.tools.layer import ToolsLayer

    h = Harness(tmp_path, {"add": py("add")})
    other = ToolsLayer(ToolsLayer.Options(tools=["add"]), h.runtime)
    await h.layer.start()
    await other.start()
    registry = h.layer.registry
    assert registry is other.registry and registry._users == {"add": 2}
    await h.layer.aclose()
    assert "add" in registry._tools
    await other.aclose()
    assert registry._tools == {}
