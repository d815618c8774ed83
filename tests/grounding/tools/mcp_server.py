"""A small MCP server for the `mcp` tool tests: `python mcp_server.py` (stdio) or
`python mcp_server.py --http PORT` (streamable HTTP at /mcp)."""

from __future__ import annotations

import asyncio
import os
import sys

try:  # mcp 2
    from mcp.server.mcpserver import MCPServer as Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # mcp 1
    from mcp.server.fastmcp import FastMCP as Server
    from mcp.server.fastmcp.exceptions import ToolError

server = Server("keel-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def whoami() -> str:
    """The server's process id and the KEEL_TEST_GREETING variable."""
    return f"{os.getpid()} {os.environ.get('KEEL_TEST_GREETING', '')}"


@server.tool()
async def nap(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "rested"


@server.tool()
def explode() -> str:
    """Always fails."""
    raise ToolError("kaboom: the rates database is down")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
