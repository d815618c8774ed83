"""String graders: `exact`, `includes`, `fuzzy_match`, `regex`.

Each passes when the output matches any one of the sample's ideal answers. The comparisons
follow OpenAI evals' basic evals so registry suites grade the same way here:

    exact        the output equals an ideal (`prefix: true`: starts with one, as evals' Match)
    includes     an ideal occurs in the output (evals' Includes)
    fuzzy_match  after normalising both (lowercase; punctuation, articles and extra whitespace
                 removed) one contains the other (evals' FuzzyMatch; its token F1 goes in details)
    regex        a pattern (or each ideal, read as one) is found in / fully matches the output
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import cached_property

from pydantic import Field, field_validator

from keel.evals.base import Grade, GraderOptions, Output, Sample
from keel.evals.graders.common import BaseGrader, no_ideal, verdict

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase; drop punctuation, the articles a/an/the and repeated whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def fuzzy_match(a: str, b: str) -> bool:
    a, b = normalize(a), normalize(b)
    if not a or not b:  # "" is in every string: only an empty answer matches an empty one
        return a == b
    return a in b or b in a


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class CaseOptions(GraderOptions):
    case_sensitive: bool = False


class ExactOptions(CaseOptions):
    strip: bool = Field(True, description="ignore leading and trailing whitespace")
    prefix: bool = Field(False, description="pass when the output starts with an ideal")


class ExactGrader(BaseGrader):
    kind = "exact"
    Options = ExactOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        if not sample.ideals():
            return no_ideal()
        text = self._prepared(output.text)
        for ideal in sample.ideals():
            wanted = self._prepared(ideal)
            same = text.startswith(wanted) if self.options.prefix else text == wanted
            if same:
                return verdict(True, matched=ideal)
        return verdict(False, matched=None)

    def _prepared(self, text: str) -> str:
        text = text.strip() if self.options.strip else text
        return text if self.options.case_sensitive else text.casefold()


class IncludesGrader(BaseGrader):
    kind = "includes"
    Options = CaseOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        if not sample.ideals():
            return no_ideal()
        fold = (lambda s: s) if self.options.case_sensitive else str.casefold
        text = fold(output.text)
        matched = next((i for i in sample.ideals() if fold(i) in text), None)
        return verdict(matched is not None, matched=matched)


class FuzzyMatchGrader(BaseGrader):
    kind = "fuzzy_match"

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        ideals = sample.ideals()
        if not ideals:
            return no_ideal()
        matched = next((i for i in ideals if fuzzy_match(output.text, i)), None)
        f1 = max(token_f1(output.text, i) for i in ideals)
        return verdict(matched is not None, matched=matched, f1=round(f1, 6))


class RegexOptions(GraderOptions):
    pattern: str | None = Field(None, description="omitted: each ideal answer is a pattern")
    flags: str = Field("", description="letters of re's inline flags: a, i, m, s, x")
    fullmatch: bool = Field(False, description="the whole output must match, not just a part")
    strip: bool = Field(True, description="ignore the output's leading/trailing whitespace")

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, flags: str) -> str:
        unknown = set(flags) - set("aimsx")
        if unknown:
            raise ValueError(f"unknown regex flag(s) {''.join(sorted(unknown))!r}; use a,i,m,s,x")
        return flags

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class RegexGrader(BaseGrader):
    kind = "regex"
    Options = RegexOptions

    @cached_property
    def _flags(self) -> int:
        flags = 0
        for letter in self.options.flags:
            flags |= getattr(re, letter.upper())
        return flags

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        patterns = [self.options.pattern] if self.options.pattern else sample.ideals()
        if not patterns:
            return no_ideal()
        text = output.text.strip() if self.options.strip else output.text
        for pattern in patterns:
            compiled = re.compile(pattern, self._flags)
            found = compiled.fullmatch(text) if self.options.fullmatch else compiled.search(text)
            if found:
                return verdict(True, pattern=pattern, match=found.group(0))
        return verdict(False, pattern=patterns[0] if len(patterns) == 1 else patterns)
