"""The tool loop for a streamed request: every round streams, and text reaches the client live.

Each round is asked for with `stream: true`. Text deltas pass straight through, so the final
answer streams token by token; tool-call deltas, finish and usage chunks are held back until the
round ends. If the round called only Keel's tools, the held chunks are dropped, the tools run
and the next round continues the same stream — the client sees one assistant message (any text
the model wrote before calling a tool, then the answer). Otherwise the held chunks are released:
the finish chunk (carrying `tool_runs`) and one usage chunk with the usage of all rounds. Every
chunk gets the first round's id, so the client sees one completion.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from keel.grounding.tools.loop import STOPPED, Conversation
from keel.pipeline import Context, Next


async def run_streaming(ctx: Context, next: Next, conversation: Conversation) -> AsyncIterator[dict]:
    stream_id = None
    try:
        while True:
            ctx.body = conversation.request(stream=True)
            round_ = _Round()
            chunks = await next(ctx)
            try:
                async for chunk in chunks:
                    stream_id = stream_id or chunk.get("id")
                    chunk["id"] = stream_id
                    for out in round_.take(chunk, first=conversation.rounds == 0):
                        yield out
            finally:
                await chunks.aclose()
            conversation.add_usage(round_.usage)
            calls = round_.tool_calls()
            if calls and not conversation.for_client(calls):
                if not conversation.last_round:
                    await conversation.run_calls(ctx, calls, round_.content())
                    continue
                round_.stop(STOPPED.format(rounds=conversation.rounds))
            for out in round_.release(conversation):
                yield out
            return
    finally:
        ctx.body = conversation.original


class _Round:
    """One round's chunks: text passes, the rest is held; tool-call deltas are assembled."""

    def __init__(self) -> None:
        self.held: list[dict] = []
        self.usage_chunk: dict | None = None
        self.usage: dict | None = None
        self.parts: list[str] = []
        self.calls: dict[int, dict] = {}

    def take(self, chunk: dict, first: bool) -> list[dict]:
        """The chunks to send now for `chunk`."""
        if chunk.get("usage") and not chunk.get("choices"):
            self.usage_chunk, self.usage = chunk, chunk["usage"]
            return []
        out, rest = [], []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.parts.append(delta["content"])
            for part in delta.get("tool_calls") or ():
                self._add_call(part)
            if delta.get("tool_calls") or choice.get("finish_reason"):
                rest.append(choice)
                if delta.get("content"):  # text and a call or finish in one chunk: split it
                    out.append({**choice, "delta": {"content": delta["content"]},
                                "finish_reason": None})
                    rest[-1] = {**choice, "delta": {k: v for k, v in delta.items()
                                                    if k != "content"}}
            elif delta.get("content") or first:
                out.append(choice)  # later rounds continue the first round's message
        if rest:
            self.held.append({**chunk, "choices": rest})
        return [{**chunk, "choices": out}] if out else []

    def _add_call(self, part: dict) -> None:
        call = self.calls.setdefault(
            part.get("index", 0), {"id": "", "type": "function",
                                   "function": {"name": "", "arguments": ""}}
        )
        if part.get("id"):
            call["id"] = part["id"]
        function = part.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def tool_calls(self) -> list[dict]:
        return [self.calls[i] for i in sorted(self.calls)]

    def content(self) -> str | None:
        return "".join(self.parts) or None

    def stop(self, text: str) -> None:
        """The model would not stop calling tools: end the message with `text` instead."""
        template = self.held[-1] if self.held else self.usage_chunk or {}
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": "stop"}
        self.held = [{**{k: v for k, v in template.items() if k != "usage"}, "choices": [choice]}]

    def release(self, conversation: Conversation) -> list[dict]:
        out = list(self.held)
        if out and conversation.runs:
            out[-1] = {**out[-1], "tool_runs": conversation.records()}
        if self.usage_chunk is not None:
            out.append({**self.usage_chunk, "usage": conversation.usage or self.usage})
        return out
