"""Stream a completion to the client as Server-Sent Events, chunk by chunk as they arrive."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from keel.errors import ClientClosed, InternalError, KeelError
from keel.pipeline import Context
from keel.pipeline.context import finish

log = logging.getLogger("keel.api")

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
    """Send the pipeline's chunks as SSE events.

    Until the first chunk, errors propagate (the caller answers them with their own status).
    Once the headers are out, every outcome ends this one response: an error becomes a final
    `data: {"error": ...}` event (a `KeelError` as itself, anything else as a logged 500
    `server_error`), the stream then ends without `[DONE]`; a client that went away (a failed
    write, or the handler cancelled) is recorded as 499 and nothing more is written.
    """
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
    # Layers may add headers while the stream is set up (the guardrails' verdicts on the input).
    response = web.StreamResponse(headers={**headers, **ctx.response_headers})
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    summary = StreamSummary()
    try:
        await _prepare(response, request)
        await _relay(response, first, chunks, trace, summary, include_usage)
        await _send(response, DONE)
        await finish(ctx)
    except asyncio.CancelledError:
        _client_closed(trace)
        raise
    except _ClientGone:
        _client_closed(trace)
        return response
    except Exception as exc:
        # Headers are gone already: report the error in the stream, as OpenAI does.
        error = exc if isinstance(exc, KeelError) else _unexpected(trace)
        trace.error = error.to_openai()["error"]
        trace.status = error.status
        # A client gone by now misses the event; the trace keeps the error, what went wrong.
        await _ended(response, b"data: " + orjson.dumps(error.to_openai()) + b"\n\n")
        return response
    finally:
        await _close(chunks, trace)
        trace.response = summary.to_dict()
        trace.record_usage(summary.usage)
    if not await _ended(response):
        _client_closed(trace)
    return response


async def _relay(response, chunk, chunks, trace, summary: StreamSummary, include_usage: bool):
    while chunk is not None:
        if summary.observe(chunk):
            trace.mark_first_token()
        if chunk.get("system_fingerprint"):
            trace.system_fingerprint = chunk["system_fingerprint"]
        if include_usage and "usage" not in chunk:
            chunk = {**chunk, "usage": None}  # as OpenAI: every chunk has the field
        if include_usage or chunk.get("choices") or not chunk.get("usage"):
            await _send(response, b"data: " + orjson.dumps(chunk) + b"\n\n")
        chunk = await anext(chunks, None)


class _ClientGone(Exception):
    """A write to the client failed: it closed the connection."""


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    try:
        await response.prepare(request)
    except ConnectionError:
        raise _ClientGone from None


async def _send(response: web.StreamResponse, data: bytes) -> None:
    # Only a failed write means the client left; a ConnectionError from the pipeline (an
    # upstream reset) is the provider's failure and is reported as such.
    try:
        await response.write(data)
    except ConnectionError:  # aiohttp's ClientConnectionResetError is a ConnectionResetError
        raise _ClientGone from None


async def _ended(response: web.StreamResponse, last: bytes = b"") -> bool:
    """Write `last` and end the stream; False when the client had gone."""
    try:
        if last:
            await response.write(last)
        await response.write_eof()
    except ConnectionError:
        return False
    except Exception:  # never let it escape: the caller would answer with a second response
        log.exception("ending a stream failed")
    return True


async def _close(chunks, trace) -> None:
    # Closing the pipeline's generator runs its cleanup (spans, upstream connection); a
    # failure there must not reach the client, whose answer is already complete.
    try:
        await chunks.aclose()
    except Exception:
        log.exception("closing the stream of trace %s failed", trace.id)


def _client_closed(trace) -> None:
    trace.status = ClientClosed.status
    trace.error = ClientClosed().to_openai()["error"]


def _unexpected(trace) -> InternalError:
    log.exception("unexpected error in the stream of trace %s", trace.id)
    return InternalError.for_trace(trace.id)
