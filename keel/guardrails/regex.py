"""The `regex` and `denylist` guards: patterns and phrases the text must not contain.

    - regex: {patterns: {ORDER_ID: "ORD-\\d{6}", TICKET: "T#\\d+"}, action: redact}
    - denylist: {words: [acme corp, globex], action: block, name: competitors}

Both are detectors: they find spans, so they can block, redact (`[ORDER_ID]`), pseudonymise
(`<ORDER_ID_1>`, restored in the answer) or flag, on requests, answers and streams.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from keel.guardrails.base import GuardContext, GuardOptions, Match, Verdict, verdict_from_matches

DetectorAction = Literal["block", "redact", "pseudonymize", "flag"]


class RegexOptions(GuardOptions):
    action: DetectorAction = "block"
    patterns: dict[str, str] = Field(
        ..., min_length=1, description="label -> Python regular expression (the label names "
        "the mask: [LABEL] or <LABEL_1>)")
    ignore_case: bool = False
    max_match_chars: int = Field(
        64, ge=1, le=10_000, description="the longest text a pattern can match: what a stream "
        "holds back so a match split across chunks is still found")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, str]) -> dict[str, str]:
        for label, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {label!r} is not a valid regular expression: {exc}")
        return patterns


class RegexGuard:
    kind: ClassVar[str] = "regex"
    Options: ClassVar[type[GuardOptions]] = RegexOptions

    def __init__(self, name: str, options: RegexOptions, runtime=None) -> None:
        self.name = name
        self.options = options
        flags = re.IGNORECASE if options.ignore_case else 0
        self._patterns = [(label, re.compile(p, flags)) for label, p in options.patterns.items()]
        self.holdback = options.max_match_chars

    def find(self, text: str) -> list[Match]:
        return [Match(m.start(), m.end(), label)
                for label, pattern in self._patterns
                for m in pattern.finditer(text) if m.end() > m.start()]

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        return verdict_from_matches(self, self.find(text))


class DenylistOptions(GuardOptions):
    action: DetectorAction = "block"
    words: list[str] = Field(..., min_length=1, description="words or phrases, matched whole "
                             "(on word boundaries), ignoring case and runs of white space")
    label: str = "DENYLIST"

    @field_validator("words")
    @classmethod
    def _not_blank(cls, words: list[str]) -> list[str]:
        words = [w.strip() for w in words]
        if not all(words):
            raise ValueError("a denylisted word cannot be empty")
        return words


class DenylistGuard:
    kind: ClassVar[str] = "denylist"
    Options: ClassVar[type[GuardOptions]] = DenylistOptions

    def __init__(self, name: str, options: DenylistOptions, runtime=None) -> None:
        self.name = name
        self.options = options
        # Longest first, so "acme corp" wins over "acme"; a space matches any run of spaces.
        words = sorted(options.words, key=len, reverse=True)
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        # The longest phrase, some slack for wider white space, and one character to see that
        # the word ended.
        self.holdback = max(len(w) for w in words) + 16

    def find(self, text: str) -> list[Match]:
        return [Match(m.start(), m.end(), self.options.label)
                for m in self._pattern.finditer(text)]

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        return verdict_from_matches(self, self.find(text))
