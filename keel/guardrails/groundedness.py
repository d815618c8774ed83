"""The `groundedness` guard: each sentence of a grounded answer must be supported by a source.

On a route with `knowledge:`, the knowledge layer leaves the passages it gave the model in
`ctx.state["knowledge.sources"]`. The answer is split into sentences; each sentence and each
passage (whole, and sentence by sentence — MiniLM reads only 256 tokens, and a claim usually
rests on one sentence of a long passage) are embedded, and a sentence is supported when its
best cosine similarity with any of them reaches `threshold`. With `judge: true`, sentences that
miss the threshold by less than `judge_margin` are put to the route's own model ("is this
sentence supported by these passages? yes/no"), which decides them.

Unsupported sentences are flagged (listed in the reasons), repaired (the model is told which
sentences the sources do not support), or blocked. A request without sources passes, with the
reason recorded. Very short sentences ("Sure!") and citation-only fragments are not checked.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from keel.errors import KeelError
from keel.guardrails.base import GuardContext, GuardOptions, Verdict

SOURCES = "knowledge.sources"
CACHE = "groundedness.passages"
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_CITATION = re.compile(r"\s*\[\d{1,3}\](?:\s*,?\s*\[\d{1,3}\])*")
REPAIR = ("These sentences of your previous answer are not supported by the sources:\n{listing}"
          "\nAnswer again using only what the sources say; leave out what they do not "
          "support, or say that you do not know.")
JUDGE = ("Passages:\n\n{passages}\n\nSentence: {sentence}\n\nIs the sentence supported by the "
         "passages above? Answer with one word: yes or no.")


class GroundednessOptions(GuardOptions):
    action: str = Field("flag", pattern="^(flag|repair|block)$")
    # Measured on tests/data/guardrails/groundedness.jsonl (docs/guards/groundedness.md).
    threshold: float = Field(0.6, ge=-1, le=1)
    judge: bool = False
    judge_margin: float = Field(0.15, ge=0, le=2)
    min_chars: int = Field(12, ge=0, description="shorter sentences are not checked")
    attempts: int = Field(1, ge=0, le=5, description="repairs the layer tries (action repair)")
    embedder: str = "minilm"


def sentences(text: str) -> list[str]:
    """The answer's sentences, citation markers removed."""
    out = []
    for part in _SENTENCE_END.split(text or ""):
        part = _CITATION.sub("", part).strip()
        if part:
            out.append(part)
    return out


class GroundednessGuard:
    kind: ClassVar[str] = "groundedness"
    Options: ClassVar[type[GuardOptions]] = GroundednessOptions

    def __init__(self, name: str, options: GroundednessOptions, runtime: Any) -> None:
        self.name = name
        self.options = options
        self.runtime = runtime

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        passages = [p for p in ctx.state.get(SOURCES) or () if p and p.strip()]
        if not passages:
            return Verdict(self.name, reasons=["no sources on the request: nothing to check"])
        claims = [s for s in sentences(text) if len(s) >= self.options.min_chars]
        if not claims:
            return Verdict(self.name, reasons=["no sentence to check"])
        best = await self._similarities(claims, passages, ctx.state)
        opts = self.options
        supported = best >= opts.threshold
        if opts.judge:
            borderline = [i for i, score in enumerate(best)
                          if not supported[i] and score >= opts.threshold - opts.judge_margin]
            verdicts = await asyncio.gather(
                *(self._judge(claims[i], passages, ctx) for i in borderline))
            for i, yes in zip(borderline, verdicts):
                supported[i] = yes
        unsupported = [(claims[i], float(best[i])) for i in range(len(claims)) if not supported[i]]
        scores = {"min_support": round(float(best.min()), 4),
                  "unsupported": float(len(unsupported)), "sentences": float(len(claims))}
        if not unsupported:
            return Verdict(self.name, scores=scores)
        reasons = [f"unsupported ({score:.2f}): {sentence}" for sentence, score in unsupported]
        listing = "\n".join(f"- {sentence}" for sentence, _ in unsupported)
        return Verdict(self.name, opts.action, reasons=reasons, scores=scores,
                       text=REPAIR.format(listing=listing))

    async def _similarities(self, claims: list[str], passages: list[str],
                            state: dict) -> np.ndarray:
        """Each claim's best cosine similarity with a passage or one of its sentences."""
        embedder = await self.runtime.embedder(self.options.embedder)
        # A repaired answer is checked again against the same passages: embed them once.
        key = (self.options.embedder, tuple(passages))
        cached = state.get(CACHE)
        if cached is None or cached[0] != key:
            pieces = list(dict.fromkeys([*passages, *(s for p in passages for s in sentences(p))]))
            cached = state[CACHE] = (key, (await embedder.embed(pieces)).vectors)
        vectors = (await embedder.embed(claims)).vectors
        return (vectors @ cached[1].T).max(axis=1)

    async def _judge(self, sentence: str, passages: list[str], ctx: GuardContext) -> bool:
        route = ctx.route
        if route is None:
            raise KeelError("the groundedness judge needs the route's model, and has no route")
        listing = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
        body = {"model": route.upstream_model, "temperature": 0, "max_tokens": 3,
                "messages": [{"role": "user",
                              "content": JUDGE.format(passages=listing, sentence=sentence)}]}
        answer = await route.provider.chat(body, route.upstream_model)
        content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        return content.strip().lower().startswith("yes")
