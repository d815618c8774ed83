"""The `mcp` tool against a real MCP server started by the test (stdio, and streamable HTTP)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.errors import ConfigError
from keel.grounding.tools.base import ToolError
from keel.grounding.tools.mcp import MCPOptions, MCPTool
from tests.servers import alive

import mcp  # noqa: E402,F401  (a test dependency: missing means a broken install, not a skip)

SERVER = str(Path(__file__).with_name("mcp_server.py"))
STDIO = [sys.executable, SERVER]


async def started(**options) -> MCPTool:
    tool = MCPTool("demo", MCPOptions(**options))
    await tool.start()
    return tool


async def test_lists_tools_calls_them_and_closes_the_server():
    tool = await started(command=STDIO, env={"KEEL_TEST_GREETING": "hej"})
    try:
        names = [d["function"]["name"] for d in tool.definitions()]
        assert names == ["demo__add", "demo__whoami", "demo__nap", "demo__explode"]
        add = tool.definitions()[0]["function"]
        assert add["description"] == "Add two integers."
        assert add["parameters"]["required"] == ["a", "b"]
        assert await tool.call("demo__add", {"a": 2, "b": 40}) == "42"
        pid, greeting = (await tool.call("demo__whoami", {})).split()
        assert greeting == "hej" and alive(int(pid))
    finally:
        await tool.aclose()
    deadline = time.monotonic() + 5
    while alive(int(pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not alive(int(pid))


async def test_errors_and_bad_arguments_are_tool_errors():
    tool = await started(command=STDIO, prefix=False, include=["add", "explode"])
    try:
        assert [d["function"]["name"] for d in tool.definitions()] == ["add", "explode"]
        with pytest.raises(ToolError, match="kaboom"):
            await tool.call("explode", {})
        with pytest.raises(ToolError, match="invalid arguments: b: 'x' is not of type 'integer'"):
            await tool.call("add", {"a": 1, "b": "x"})
        with pytest.raises(ToolError, match="no tool 'nap'"):
            await tool.call("nap", {"seconds": 0})
    finally:
        await tool.aclose()
    with pytest.raises(ToolError, match="not running"):
        await tool.call("add", {"a": 1, "b": 2})


async def test_calls_from_several_tasks_run_concurrently_and_time_out():
    tool = await started(command=STDIO, timeout_s=2.0)
    try:
        t0 = time.perf_counter()
        naps = [asyncio.create_task(tool.call("demo__nap", {"seconds": 1.0})) for _ in range(3)]
        assert await asyncio.gather(*naps) == ["rested"] * 3
        # ~1 s together, 3 s one after another: the margin holds on a busy 2-core runner.
        assert time.perf_counter() - t0 < 2.5
        with pytest.raises(ToolError, match="within 2 s"):
            await tool.call("demo__nap", {"seconds": 5})
        assert await tool.call("demo__add", {"a": 1, "b": 1}) == "2"  # still serving
    finally:
        await tool.aclose()


async def test_start_fails_clearly():
    with pytest.raises(ConfigError, match="tools.demo: could not start the MCP server"):
        await started(command=[sys.executable, "-c", "import sys; sys.exit(3)"],
                      start_timeout_s=10)
    with pytest.raises(ConfigError, match="tools.demo.include: the server has no tool nope"):
        await started(command=STDIO, include=["add", "nope"])
    with pytest.raises(ValidationError, match="either command"):
        MCPOptions()
    with pytest.raises(ValidationError, match="either command"):
        MCPOptions(command=["x"], url="http://127.0.0.1:1/mcp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, "--http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


async def test_streamable_http(http_server):
    tool = await started(url=http_server, include=["add"])
    try:
        assert await tool.call("demo__add", {"a": 20, "b": 22}) == "42"
    finally:
        await tool.aclose()
