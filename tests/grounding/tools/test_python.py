"""The `python` tool: schema from the signature, description from the docstring, pydantic
validation, sync functions in a thread, async ones awaited, results as JSON."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from pydantic import ValidationError

from keel.errors import ConfigError, KeelError
from keel.grounding.knowledge import KnowledgeBase
from keel.grounding.tools.base import ToolError
from keel.grounding.tools.calls import Toolbox
from keel.grounding.tools.python import PythonOptions, PythonTool
from keel.pipeline import Trace
from tests.grounding.knowledge.conftest import make_runtime
from tests.grounding.tools import sample_functions

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


async def test_hung_calls_hold_only_the_tools_own_threads(tmp_path):
    """Defect 8 of issue 7: timed-out calls keep their threads, so they must not come from the
    event loop's shared executor. A small default executor (as on a 2-core server) makes the
    starvation certain where it can happen."""
    sample_functions.RELEASE = threading.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=3))
    runtime = make_runtime(f"sqlite:///{tmp_path / 'keel.db'}")
    kb = KnowledgeBase(runtime)
    await kb.add_documents("help", [{"id": "d", "text": "Refunds take five days."}])
    t = await tool("hang", timeout_s=0.2, max_threads=2, pool_wait_s=0)
    try:
        results = await asyncio.gather(*(t.call("hang", {}) for _ in range(3)),
                                       return_exceptions=True)
        errors = sorted(str(r) for r in results if isinstance(r, ToolError))
        assert len(errors) == 3
        assert sum("no result within 0.2 s" in e for e in errors) == 2
        assert sum("tool pool busy" in e for e in errors) == 1
        # The server's own threads are free: the knowledge store still answers.
        hits = await asyncio.wait_for(kb.search("help", "refunds"), 30)
        assert [h.document_id for h in hits] == ["d"]
        # ...and so does shutdown, which waits for the shared executor's threads.
        await asyncio.wait_for(loop.shutdown_default_executor(), 30)
    finally:
        sample_functions.RELEASE.set()
        await runtime.aclose()


async def test_a_busy_pool_frees_up_when_the_calls_return():
    t = await tool("slow", max_threads=1, pool_wait_s=30)
    assert await asyncio.gather(t.call("slow", {"seconds": 0.05}),
                                t.call("slow", {"seconds": 0.05})) == ["slept", "slept"]


async def test_a_pool_busy_error_reaches_the_model_as_the_tool_result():
    sample_functions.RELEASE = threading.Event()
    t = await tool("hang", timeout_s=0.1, max_threads=1, pool_wait_s=0)
    box = Toolbox([t])
    call = {"id": "c", "function": {"name": "hang", "arguments": "{}"}}
    try:
        first = await box.run(call, Trace(), 1000)
        second = await box.run(call, Trace(), 1000)
    finally:
        sample_functions.RELEASE.set()
    assert not first.ok and "no result within" in first.error
    assert not second.ok and orjson.loads(second.content)["error"].startswith("tool pool busy")


def test_tool_error_is_a_keel_error():
    error = ToolError("refused")
    assert isinstance(error, KeelError) and error.status == 502
    assert error.to_openai()["error"] == {"message": "refused", "type": "tool_error",
                                          "param": None, "code": "tool_error"}


async def test_a_failing_tool_is_logged_by_stack_and_type_not_by_its_message(caplog):
    # The message may quote the arguments (user text): the log must not hold it, whatever
    # `record_bodies` says; the model gets it as the tool's result, the trace's span has it.
    t = await tool("echo_fail")
    call = {"id": "c", "function": {"name": "echo_fail", "arguments": '{"text": "MARK-7Q"}'}}
    with caplog.at_level(logging.INFO):
        run = await Toolbox([t]).run(call, Trace(), 1000)
    assert not run.ok and "MARK-7Q" in run.error
    assert "ValueError" in caplog.text and "sample_functions.py" in caplog.text
    assert "MARK-7Q" not in caplog.text
