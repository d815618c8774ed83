"""The `python` tool: schema from the signature, description from the docstring, pydantic
validation, sync functions in a thread, async ones awaited, results as JSON."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from keel.errors import ConfigError
from keel.grounding.tools.base import ToolError
from keel.grounding.tools.python import PythonOptions, PythonTool

MODULE = "tests.grounding.tools.sample_functions"


async def tool(function: str, **options) -> PythonTool:
    t = PythonTool(function, PythonOptions(function=f"{MODULE}:{function}", **options))
    await t.start()
    return t


async def test_schema_and_description_come_from_the_function():
    (definition,) = (await tool("quote")).definitions()
    function = definition["function"]
    assert function["name"] == "quote"
    assert function["description"].startswith("A mortgage rate quote.")
    params = function["parameters"]
    assert params["required"] == ["term_years"]
    assert params["properties"]["term_years"] == {
        "type": "integer", "description": "loan term in years", "minimum": 1, "maximum": 40}
    assert params["properties"]["kind"]["enum"] == ["fixed", "arm"]
    assert params["additionalProperties"] is False


async def test_a_description_in_the_config_wins():
    t = await tool("add", description="Sum.")
    assert t.definitions()[0]["function"]["description"] == "Sum."


async def test_arguments_are_coerced_and_defaults_applied():
    t = await tool("add")
    assert await t.call("add", {"a": "40"}) == "42"
    assert await t.call("add", {"a": 1, "b": 1}) == "2"


async def test_invalid_arguments_say_what_is_wrong():
    t = await tool("quote")
    with pytest.raises(ToolError) as info:
        await t.call("quote", {"term_years": 99, "kind": "balloon", "extra": 1})
    message = str(info.value)
    assert "term_years" in message and "kind" in message and "extra" in message


async def test_async_functions_are_awaited_and_models_become_json():
    t = await tool("quote")
    assert orjson.loads(await t.call("quote", {"term_years": 30})) == {
        "term_years": 30, "rate": 6.5}


async def test_a_str_result_stays_as_it_is():
    assert await (await tool("greet")).call("greet", {"name": "Ada"}) == "hello Ada"


async def test_a_slow_function_times_out_as_a_tool_error():
    t = await tool("async_slow", timeout_s=0.05)
    with pytest.raises(ToolError, match="within 0.05 s"):
        await t.call("async_slow", {"seconds": 1})


async def test_a_function_that_cannot_be_imported_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import"):
        await PythonTool("x", PythonOptions(function=f"{MODULE}:missing")).start()
    with pytest.raises(ValidationError):
        PythonOptions(function="not a target")
