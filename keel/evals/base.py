"""The types every part of evals shares: samples, outputs, grades, and the grader protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


@dataclass
class Sample:
    """One case of a dataset. `input` is always chat messages (a string becomes one user turn);
    `ideal` is the expected answer or a list of acceptable ones."""

    id: str
    input: list[dict]
    ideal: str | list[str] | None = None
    context: str | list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def ideals(self) -> list[str]:
        if self.ideal is None:
            return []
        return [self.ideal] if isinstance(self.ideal, str) else [str(i) for i in self.ideal]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Output:
    """What a variant answered for a sample (or the error it got)."""

    text: str | None
    response: dict | None = None  # the full chat.completion (citations, tool_runs ride here)
    error: dict | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    system_fingerprint: str | None = None
    trace_id: str | None = None

    @property
    def citations(self) -> list[dict]:
        return list((self.response or {}).get("citations") or [])


@dataclass
class Grade:
    """A grader's verdict. `score` is in [0, 1] (higher is better); `passed` is the pass/fail
    reading of it; `label` a category when the grader has them (e.g. a fact grade)."""

    score: float
    passed: bool | None = None
    label: str | None = None
    reasoning: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class GraderOptions(BaseModel):
    """Base for a grader's settings in a suite: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class Judge(Protocol):
    """What model-graded graders and the similarity grader get to work with."""

    async def complete(self, body: dict) -> dict:
        """A chat completion through a Keel model (the body names the model)."""

    async def embed(self, texts: list[str], embedder: str = "minilm"):
        """keel.embeddings.Embeddings for `texts`."""


class Grader(Protocol):
    """Grades one output of one sample. Found by `kind` through the `keel.graders` group."""

    kind: ClassVar[str]
    Options: ClassVar[type[GraderOptions]]

    def __init__(self, name: str, options: GraderOptions, judge: Judge) -> None: ...

    async def grade(self, sample: Sample, output: Output) -> Grade: ...

    def describe(self) -> dict:
        """Everything that defines this grader (options, judge model, prompt text), for the
        audit stored with each run."""
