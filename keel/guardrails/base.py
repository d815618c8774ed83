"""The guard protocol: what a guard is given, what it answers, and its options' common part.

Two kinds of guard share one protocol:

- **Detectors** find spans of text (PII, secrets, denylisted phrases) with `find(text)`; the
  layer turns their matches into the action: block, redact (mask or pseudonymise), or flag.
  Because `find` is synchronous and local, the layer can also run it on a stream as it passes,
  holding back only `holdback` characters (the longest match that could still be growing).
- **Judges** score the whole text with `check(text, stage, ctx)` (prompt injection, moderation,
  topics, JSON schema, groundedness, length, rewrite) and return a `Verdict`.

A guard implements `check`; a detector also implements `find` and sets `holdback`, and its
`check` is usually `verdict_from_matches(self, matches)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["input", "output"]
Action = Literal["pass", "block", "redact", "pseudonymize", "rewrite", "repair", "flag"]
ACTED = ("block", "redact", "pseudonymize", "rewrite", "repair", "flag")


class GuardOptions(BaseModel):
    """Options every guard accepts; a guard's own Options subclass this and narrow `action`."""

    model_config = ConfigDict(extra="forbid")

    action: str = "block"
    # A guard that errors: "closed" refuses the request (the default for block guards), "open"
    # lets it through with the error on the trace (the default for every other action).
    on_error: Literal["open", "closed"] | None = None
    # For block: answer with this text as a normal completion (finish_reason "content_filter")
    # instead of a 400.
    refusal: str | None = None
    # Which stage(s) the guard runs on when listed in both `input:` and `output:` is not wanted;
    # the layer sets it from where the guard is listed.
    stages: tuple[Stage, ...] = ("input", "output")

    def fails_closed(self) -> bool:
        if self.on_error is not None:
            return self.on_error == "closed"
        return self.action == "block"


@dataclass(frozen=True, slots=True)
class Match:
    """A span a detector found: text[start:end] is a `label` (EMAIL, CREDIT_CARD, AWS_KEY...)."""

    start: int
    end: int
    label: str
    score: float = 1.0


@dataclass(slots=True)
class Verdict:
    guard: str  # the guard's name in keel.yaml
    action: str = "pass"  # one of Action
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)
    text: str | None = None  # rewrite: the new request text; repair: what to tell the model
    error: str | None = None  # the guard failed; `action` is what on_error decided

    @property
    def acted(self) -> bool:
        return self.action != "pass"


@dataclass(slots=True)
class GuardContext:
    """What a guard may look at besides its text."""

    stage: Stage
    body: dict  # the request as the model will see it (after earlier guards)
    runtime: Any  # keel.pipeline.runtime.Runtime: embedders, the store, metrics
    state: dict[str, Any]  # the request's shared state (ctx.state), e.g. retrieved passages
    route: Any = None  # keel.pipeline.Route: its provider, for guards that ask a model


class Guard(Protocol):
    kind: ClassVar[str]
    Options: ClassVar[type[GuardOptions]]
    name: str  # as listed in keel.yaml (the kind unless renamed)
    options: GuardOptions

    def __init__(self, name: str, options: GuardOptions, runtime: Any) -> None: ...

    async def check(self, text: str, ctx: GuardContext) -> Verdict: ...


class Detector(Guard, Protocol):
    holdback: int  # characters a stream keeps back: the longest match that may still grow

    def find(self, text: str) -> list[Match]: ...


def verdict_from_matches(guard: Guard, matches: list[Match]) -> Verdict:
    """A detector's verdict: its action when something was found, pass otherwise."""
    if not matches:
        return Verdict(guard.name)
    labels = sorted({m.label for m in matches})
    return Verdict(guard.name, guard.options.action, reasons=[f"found {', '.join(labels)}"],
                   scores={label: 1.0 for label in labels}, matches=matches)


class ThresholdOptions(GuardOptions):
    """For classifier guards: act when the score reaches the threshold."""

    threshold: float = Field(0.5, ge=0, le=1)
