"""Tools: functions the model calls and Keel executes, so the application gets a grounded answer.

    base.py      the `Tool` protocol every kind implements, and `ToolError`
    registry.py  the tools named in keel.yaml (`tools:`), built and started once, shared by models
    http.py      `http`: a service URL, its JSON-schema parameters, an allow-list of hosts
    python.py    `python`: an importable function; its signature and docstring are the schema
    mcp.py       `mcp`: the tools of an MCP server (stdio command or streamable HTTP URL)
    calls.py     one tool call run from the model's `tool_calls`: parse, validate, run, time
    layer.py     the `tools` layer: offer the tools, run the calls, feed results back, repeat
    stream.py    the same loop for streamed requests, the final answer streamed as it comes

A tool failure never fails the request: it goes back to the model as the tool's result.
"""
