"""The `numeric` grader: read a number from the output and compare it with the ideal one.

The number taken is the last in the output by default (a worked answer ends with its result),
or the first with `pick: first`. It passes when it is within `abs_tol` or `rel_tol` of any ideal
(as math.isclose). Thousands separators ("1,234.5"), signs, decimals and exponents are read.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field

from keel.evals.base import Grade, GraderOptions, Output, Sample
from keel.evals.graders.common import ERROR, BaseGrader, failed, no_ideal, verdict

# A sign only counts when nothing word-like precedes it: "x-3" is not minus three.
_NUMBER = re.compile(
    r"(?:(?<![\w.])[-+\u2212])?"
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE][-+]?\d+)?")


def numbers(text: str) -> list[float]:
    return [float(m.group(0).replace(",", "").replace("\u2212", "-"))
            for m in _NUMBER.finditer(text)]


class NumericOptions(GraderOptions):
    pick: Literal["first", "last"] = Field("last", description="which number of the output")
    abs_tol: float = Field(1e-6, ge=0)
    rel_tol: float = Field(0.0, ge=0)


class NumericGrader(BaseGrader):
    kind = "numeric"
    Options = NumericOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        if not sample.ideals():
            return no_ideal()
        expected = [found[0] for found in map(numbers, sample.ideals()) if found]
        if not expected:
            return failed(ERROR, "no ideal answer of the sample is a number",
                          ideal=sample.ideals())
        found = numbers(output.text)
        if not found:
            return verdict(False, extracted=None, expected=expected,
                           problem="no number in the output")
        value = found[0] if self.options.pick == "first" else found[-1]
        close = any(math.isclose(value, e, rel_tol=self.options.rel_tol,
                                 abs_tol=self.options.abs_tol) for e in expected)
        return verdict(close, extracted=value, expected=expected,
                       difference=min(abs(value - e) for e in expected))
