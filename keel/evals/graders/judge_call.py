"""One call to the judge: the options every model-graded grader takes, the request, the reply.

Judge requests are made reproducible: temperature 0 and a fixed seed by default, so re-grading
the same output gives the same verdict wherever the judge model honours them.

A judge prompt quotes the answer it grades, so a long answer can make it overflow the judge's
context. The judge model's `context_length_exceeded` error becomes JudgePromptTooLong, whose
message ("judge prompt too long for smollm2 (4500 tokens > context 4096)") is what the grade
records, so the run's report says it per sample.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from keel.errors import InvalidRequest, KeelError
from keel.evals.base import GraderOptions, Judge


class JudgeOptions(GraderOptions):
    model: str = Field("smollm2", description="the Keel model (or route) used as the judge")
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = Field(0, description="sent to the judge; null leaves it out")
    max_tokens: int = Field(512, ge=1, description="room for the judge's reasoning")


class JudgeReplyError(ValueError):
    """The judge's reply carries no text to read."""


class JudgePromptTooLong(InvalidRequest):
    """The judge model's context cannot hold the prompt (and room for the judge's answer)."""

    code = "context_length_exceeded"


async def ask(judge: Judge, options: JudgeOptions, messages: list[dict],
              response_format: dict | None = None) -> str:
    body: dict[str, Any] = {"model": options.model, "messages": messages,
                            "temperature": options.temperature,
                            "max_tokens": options.max_tokens}
    if options.seed is not None:
        body["seed"] = options.seed
    if response_format is not None:
        body["response_format"] = response_format
    try:
        reply = await judge.complete(body)
    except KeelError as exc:
        if exc.code == "context_length_exceeded":
            raise prompt_too_long(options.model, exc) from None
        raise
    return reply_text(reply)


# The local engine's wording (and this repo's fake's); another provider's message is quoted.
_TAKES = re.compile(r"take (\d+) tokens")
_ASKS = re.compile(r"asks for (\d+) more")
_CONTEXT = re.compile(r"context of (\d+) tokens")


def prompt_too_long(model: str, exc: KeelError) -> JudgePromptTooLong:
    """`judge prompt too long for <model> (N tokens > context C)`, from the judge's error."""
    message = exc.message
    takes, asks, context = (p.search(message) for p in (_TAKES, _ASKS, _CONTEXT))
    if takes and context:
        need = f"{takes[1]} tokens" + (f" + max_tokens {asks[1]}" if asks else "")
        reason = f"({need} > context {context[1]})"
    else:
        reason = f"({message})"
    return JudgePromptTooLong(f"judge prompt too long for {model} {reason}",
                              param=exc.param)


def reply_text(reply: Any) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeReplyError(f"the judge's reply is not a chat completion: {reply!r:.200}") from None
    if not isinstance(content, str):
        raise JudgeReplyError("the judge's reply has no text content")
    return content


def json_schema_format(name: str, schema: dict) -> dict:
    """`response_format` asking the judge (through Keel's json_mode layer) for this schema."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "strict": True, "schema": schema}}
