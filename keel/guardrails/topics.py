"""The `topics` guard: keep a conversation on the topics allowed, away from the ones denied.

Topics are described in words (`allowed: ["questions about Acme routers, their setup and
troubleshooting"]`, `denied: ["politics", "medical advice"]`), optionally with a few example
phrasings each. The descriptions and examples are embedded once, at start; each message is
embedded and compared to them by cosine similarity (MiniLM's vectors are unit length, so a dot
product). A topic's score is its best match among its description and examples.

A message is off topic when its best allowed score is below `allowed_threshold` (only when
`allowed` is given), and denied when some denied topic scores at least `denied_threshold`.
Either way the guard answers its action (block by default; with `refusal`, the classic support
bot's polite "I can only help with...").
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keel.guardrails.base import GuardContext, GuardOptions, Verdict


class Topic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)


class TopicsOptions(GuardOptions):
    allowed: list[str | Topic] = Field(default_factory=list)
    denied: list[str | Topic] = Field(default_factory=list)
    # Measured on tests/data/guardrails/topics-support.jsonl (docs/guards/topics.md).
    allowed_threshold: float = Field(0.3, ge=-1, le=1)
    denied_threshold: float = Field(0.3, ge=-1, le=1)
    embedder: str = "minilm"

    @model_validator(mode="after")
    def _some_topic(self):
        if not self.allowed and not self.denied:
            raise ValueError("topics needs `allowed` or `denied` topics (or both)")
        return self


def _topic(item: str | Topic) -> Topic:
    return Topic(description=item) if isinstance(item, str) else item


class _Topics:
    """The phrasings of a list of topics, embedded: row i of `vectors` belongs to topic
    `owner[i]`."""

    def __init__(self, topics: list[Topic]) -> None:
        self.topics = topics
        self.texts = [t for topic in topics for t in (topic.description, *topic.examples)]
        self.owner = np.array([i for i, topic in enumerate(topics)
                               for _ in (topic.description, *topic.examples)], dtype=np.int64)
        self.vectors: np.ndarray | None = None

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """Each topic's best cosine similarity with `vector`."""
        sims = self.vectors @ vector
        best = np.full(len(self.topics), -1.0, dtype=np.float32)
        np.maximum.at(best, self.owner, sims)
        return best


class TopicsGuard:
    kind: ClassVar[str] = "topics"
    Options: ClassVar[type[GuardOptions]] = TopicsOptions

    def __init__(self, name: str, options: TopicsOptions, runtime: Any) -> None:
        self.name = name
        self.options = options
        self.runtime = runtime
        self.allowed = _Topics([_topic(t) for t in options.allowed])
        self.denied = _Topics([_topic(t) for t in options.denied])
        self._embedder = None

    async def start(self) -> None:
        self._embedder = await self.runtime.embedder(self.options.embedder)
        for topics in (self.allowed, self.denied):
            if topics.texts:
                topics.vectors = (await self._embedder.embed(topics.texts)).vectors

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        if self._embedder is None:
            await self.start()
        if not text.strip():
            return Verdict(self.name)
        vector = (await self._embedder.embed([text])).vectors[0]
        opts = self.options
        reasons: list[str] = []
        scores: dict[str, float] = {}
        if self.allowed.topics:
            best = self.allowed.scores(vector)
            top = int(np.argmax(best))
            scores["allowed"] = round(float(best[top]), 4)
            if best[top] < opts.allowed_threshold:
                reasons.append(
                    f"off topic: closest allowed topic {self.allowed.topics[top].description!r} "
                    f"scores {best[top]:.2f} < {opts.allowed_threshold}")
        if self.denied.topics:
            best = self.denied.scores(vector)
            scores["denied"] = round(float(best.max()), 4)
            reasons += [f"denied topic {topic.description!r} scores {score:.2f} >= "
                        f"{opts.denied_threshold}"
                        for topic, score in zip(self.denied.topics, best)
                        if score >= opts.denied_threshold]
        if not reasons:
            return Verdict(self.name, scores=scores)
        return Verdict(self.name, opts.action, reasons=reasons, scores=scores)
