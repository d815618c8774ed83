"""Asking the judge: the options every model-graded grader takes, and one call to the model.

Judge requests are made reproducible: temperature 0 and a fixed seed by default, so re-grading
the same output gives the same verdict wherever the judge model honours them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from keel.evals.base import GraderOptions, Judge


class JudgeOptions(GraderOptions):
    model: str = Field("smollm2", description="the Keel model (or route) used as the judge")
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = Field(0, description="sent to the judge; null leaves it out")
    max_tokens: int = Field(512, ge=1, description="room for the judge's reasoning")


class JudgeReplyError(ValueError):
    """The judge's reply carries no text to read."""


async def ask(judge: Judge, options: JudgeOptions, messages: list[dict],
              response_format: dict | None = None) -> str:
    body: dict[str, Any] = {"model": options.model, "messages": messages,
                            "temperature": options.temperature,
                            "max_tokens": options.max_tokens}
    if options.seed is not None:
        body["seed"] = options.seed
    if response_format is not None:
        body["response_format"] = response_format
    return reply_text(await judge.complete(body))


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
