"""What every grader shares: a small base class, the two failure labels, and text helpers.

A grader never stops a run. Whatever goes wrong while grading one output (no output text, a
judge that raises, a user function that raises) becomes a Grade with score 0, `passed` False,
a label saying which kind of failure it was, and the problem in `details["error"]`:

    __error__     grading could not happen (the output failed, the judge raised, bad data)
    __invalid__   the judge answered, but nothing usable could be read from its answer
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from keel.errors import KeelError
from keel.evals.base import Grade, GraderOptions, Judge, Output, Sample
from keel.messages import content_text  # noqa: F401  (graders import it from here)

ERROR = "__error__"
INVALID = "__invalid__"


def failed(label: str, problem: str, **details: Any) -> Grade:
    return Grade(score=0.0, passed=False, label=label, details={"error": problem, **details})


class BaseGrader:
    """Keeps name, options and judge; turns every failure into a Grade; describes itself.

    Subclasses implement `evaluate`, which only sees outputs that have text.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[GraderOptions]] = GraderOptions

    def __init__(self, name: str, options: GraderOptions, judge: Judge | None = None) -> None:
        self.name = name
        self.options = options
        self.judge = judge

    async def grade(self, sample: Sample, output: Output) -> Grade:
        if output.text is None:
            return failed(ERROR, "the output has no text", output_error=output.error)
        try:
            return await self.evaluate(sample, output)
        except KeelError as exc:  # already says what went wrong (a judge prompt too long, ...)
            return failed(ERROR, exc.message)
        except Exception as exc:  # noqa: BLE001 — one bad grade must not end a 1,000-sample run
            return failed(ERROR, f"{type(exc).__name__}: {exc}")

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name,
                "options": self.options.model_dump(mode="json", by_alias=True)}


def verdict(passed: bool, **details: Any) -> Grade:
    """The grade of a pass/fail check: 1 or 0."""
    return Grade(score=1.0 if passed else 0.0, passed=passed, details=details)


def no_ideal() -> Grade:
    return failed(ERROR, "the sample has no ideal answer to compare with")


# -- text --------------------------------------------------------------------------------------


def transcript(messages: list[dict]) -> str:
    """Chat messages as one text for a judge prompt, the way OpenAI evals renders them: a lone
    message is just its content; otherwise one line each, prefixed by its speaker (system
    messages unprefixed, few-shot turns by their `name`)."""
    if len(messages) == 1:
        return content_text(messages[0].get("content"))
    lines = []
    for msg in messages:
        speaker = msg.get("name") or msg.get("role") or "user"
        prefix = "" if speaker == "system" else f"{speaker.replace('_', ' ').capitalize()}: "
        lines.append(prefix + content_text(msg.get("content")))
    return "\n".join(lines)


def question_text(sample: Sample) -> str:
    """The question asked: the last user turn (the whole transcript when there is none)."""
    for msg in reversed(sample.input):
        if msg.get("role") == "user":
            return content_text(msg.get("content"))
    return transcript(sample.input)


def ideal_text(sample: Sample) -> str:
    """The expert answer(s) as one text: alternatives on their own lines."""
    return "\n".join(sample.ideals())


def context_passages(sample: Sample, output: Output) -> list[str]:
    """What was retrieved: the sample's `context`, else the texts of the output's citations."""
    if sample.context:
        return [sample.context] if isinstance(sample.context, str) else list(sample.context)
    return [c["text"] for c in output.citations if isinstance(c, dict) and c.get("text")]


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_DECODER = json.JSONDecoder()


def find_json(text: str) -> Any:
    """The JSON value in `text`: all of it, a ```json fence, or the first object or array
    embedded in prose. Raises ValueError when there is none."""
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return _DECODER.raw_decode(text, start)[0]
            except ValueError:
                continue
    raise ValueError("no JSON found in the text")
