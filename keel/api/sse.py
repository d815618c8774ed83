"""Stream a completion to the client as Server-Sent Events, chunk by chunk as they arrive."""

from __future__ import annotations

import orjson
from aiohttp import web

from keel.errors import KeelError
from keel.pipeline import Context

DONE = b"data: [DONE]\n\n"


class StreamSummary:
    """What the trace keeps of a stream: the text, finish reasons, tool calls and usage."""

    __slots__ = ("parts", "finish_reason", "tool_call_deltas", "usage", "chunks")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.tool_call_deltas: list = []
        self.usage: dict | None = None
        self.chunks = 0

    def observe(self, chunk: dict) -> bool:
        """Take note of a chunk; True when it carries generated output."""
        self.chunks += 1
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        output = False
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.parts.append(delta["content"])
                output = True
            if delta.get("tool_calls"):
                self.tool_call_deltas.extend(delta["tool_calls"])
                output = True
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return output

    def to_dict(self) -> dict:
        return {
            "content": "".join(self.parts),
            "finish_reason": self.finish_reason,
            "tool_call_deltas": self.tool_call_deltas or None,
            "usage": self.usage,
            "chunks": self.chunks,
        }


async def stream_completion(request: web.Request, ctx: Context, headers: dict) -> web.StreamResponse:
    chunks = await ctx.route.handler(ctx)
    trace = ctx.trace
    try:
        # Wait for the first chunk before sending headers: an upstream that fails at once
        # (429, refused connection) still gets a proper status and error body.
        first = await anext(chunks, None)
    except BaseException:
        await chunks.aclose()
        raise
    include_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    summary = StreamSummary()
    try:
        chunk = first
        while chunk is not None:
            if summary.observe(chunk):
                trace.mark_first_token()
            if chunk.get("system_fingerprint"):
                trace.system_fingerprint = chunk["system_fingerprint"]
            if include_usage and "usage" not in chunk:
                chunk = {**chunk, "usage": None}  # as OpenAI: every chunk has the field
            if include_usage or chunk.get("choices") or not chunk.get("usage"):
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            chunk = await anext(chunks, None)
    except KeelError as exc:
        # Headers are gone already: report the error in the stream, as OpenAI does.
        trace.error = exc.to_openai()["error"]
        trace.status = exc.status
        await response.write(b"data: " + orjson.dumps(exc.to_openai()) + b"\n\n")
    else:
        await response.write(DONE)
    finally:
        await chunks.aclose()
        trace.response = summary.to_dict()
        trace.record_usage(summary.usage)
    await response.write_eof()
    return response
