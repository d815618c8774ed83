"""The tool loop for one request: offer the tools, run the calls, feed results back, repeat.

A round is one call to the model. While its answer calls only Keel's tools, Keel runs them and
asks again; after `max_rounds` rounds of calls, one last round with `tool_choice: "none"` makes
the model answer from what it has. A forced `tool_choice` applies to the first round only, so
the model is free to answer afterwards. When the answer calls any tool the *client* declared,
it goes back to the client as it is, for the client to run (Keel's own calls in the same answer
are not run then). Usage is summed over the rounds; `tool_runs` lists what ran.
"""

from __future__ import annotations

import asyncio
import os

from keel.grounding.tools.calls import Toolbox, ToolRun
from keel.pipeline import Context, Next
from keel.providers.shapes import add_usage

FORCED = ("required",)
STOPPED = "I could not finish: the tools were still being called after {rounds} rounds."


class Conversation:
    """The request as it grows round by round, and what the rounds cost and ran."""

    def __init__(self, body: dict, toolbox: Toolbox, options) -> None:
        self.original = body
        self.toolbox = toolbox
        self.options = options
        declared = [t for t in body.get("tools") or () if isinstance(t, dict)]
        self.client_functions = {
            (t.get("function") or {}).get("name") for t in declared
        } - set(toolbox.functions)  # on a name clash Keel's own tool wins
        self.tools = [
            t for t in declared if (t.get("function") or {}).get("name") in self.client_functions
        ] + toolbox.definitions
        self.messages = list(body.get("messages") or ())
        self.first_choice = first_tool_choice(options.tool_choice, body.get("tool_choice"))
        self.usage: dict[str, int] = {}
        self.runs: list[ToolRun] = []
        self.rounds = 0

    def request(self, *, stream: bool) -> dict:
        """The body of the next round."""
        body = {**self.original, "messages": self.messages, "tools": self.tools, "stream": stream}
        if not stream:
            body.pop("stream_options", None)
        choice = self.first_choice if self.rounds == 0 else later_tool_choice(self.first_choice)
        if self.last_round:
            choice = "none"
        if choice is None:
            body.pop("tool_choice", None)
        else:
            body["tool_choice"] = choice
        return body

    @property
    def last_round(self) -> bool:
        return self.rounds >= self.options.max_rounds

    def for_client(self, calls: list[dict]) -> bool:
        """True when the client must run these calls: it declared one of the functions."""
        return any((c.get("function") or {}).get("name") in self.client_functions for c in calls)

    async def run_calls(self, ctx: Context, calls: list[dict], content: str | None) -> None:
        """Run one round's calls and add them, and their results, to the conversation."""
        calls = [_with_id(c, i) for i, c in enumerate(calls)]
        limit = self.options.result_max_chars
        jobs = [self.toolbox.run(call, ctx.trace, limit) for call in calls]
        if self.options.parallel and len(jobs) > 1:
            runs = list(await asyncio.gather(*jobs))
        else:
            runs = [await job for job in jobs]
        self.messages.append({"role": "assistant", "content": content, "tool_calls": calls})
        for call, run in zip(calls, runs):
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": run.content})
        self.runs.extend(runs)
        self.rounds += 1

    def add_usage(self, usage: dict | None) -> None:
        add_usage(self.usage, usage)

    def records(self) -> list[dict]:
        return [run.record() for run in self.runs]


async def run(ctx: Context, next: Next, conversation: Conversation) -> dict:
    """The loop for a non-streaming request; returns the final `chat.completion`."""
    try:
        while True:
            ctx.body = conversation.request(stream=False)
            result = await next(ctx)
            conversation.add_usage(result.get("usage"))
            message = _first_message(result)
            calls = message.get("tool_calls") or []
            if not calls or conversation.for_client(calls):
                return _finish(result, conversation)
            if conversation.last_round:
                return _finish(_stopped(result, conversation), conversation)
            await conversation.run_calls(ctx, calls, message.get("content"))
    finally:
        ctx.body = conversation.original


def first_tool_choice(configured, client):
    """The layer's `tool_choice` (a mode or a function name) wins over the client's."""
    if configured is None:
        return client
    if isinstance(configured, str) and configured not in ("auto", "none", "required"):
        return {"type": "function", "function": {"name": configured}}
    return configured


def later_tool_choice(first):
    """After the first round a forced choice becomes "auto", or the model could never answer."""
    if first in FORCED or isinstance(first, dict):
        return "auto"
    return first


def _finish(result: dict, conversation: Conversation) -> dict:
    if conversation.usage:
        result["usage"] = conversation.usage
    if conversation.runs:
        result["tool_runs"] = conversation.records()
    return result


def _stopped(result: dict, conversation: Conversation) -> dict:
    for choice in result.get("choices") or ():
        message = choice.get("message") or {}
        message.pop("tool_calls", None)
        message["content"] = STOPPED.format(rounds=conversation.rounds)
        choice["finish_reason"] = "stop"
    return result


def _first_message(result: dict) -> dict:
    choices = result.get("choices") or [{}]
    return choices[0].get("message") or {}


def _with_id(call: dict, index: int) -> dict:
    # Some OpenAI-compatible servers leave ids out; the tool message must point at its call.
    if call.get("id"):
        return {**call, "type": call.get("type") or "function"}
    return {**call, "id": f"call_{os.urandom(6).hex()}_{index}", "type": "function"}
