"""The `python` grader: a function of yours, `fn(sample, output)`, named "package.module:function".

It gets the keel.evals.base Sample and Output and returns (plain or awaitable):

    a bool                      passed, score 1 or 0
    a number                    the score (clipped to [0, 1]); passed = score >= threshold
    a dict                      {"score": ..., "passed"?: ..., "label"?: ..., "reasoning"?: ...,
                                 "details"?: {...}}

A sync function runs on the event loop, so keep it quick (or make it async). An exception in it
grades that sample 0 with label "__error__"; the run goes on.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import Field

from keel.evals.base import Grade, GraderOptions, Judge, Output, Sample
from keel.evals.graders.common import BaseGrader
from keel.plugins import import_callable


class PythonOptions(GraderOptions):
    function: str = Field(pattern=r"^[\w.]+:[\w.]+$", description='"package.module:function"')
    threshold: float = Field(0.5, ge=0, le=1, description="pass mark for a numeric score")


class PythonGrader(BaseGrader):
    kind = "python"
    Options = PythonOptions

    def __init__(self, name: str, options: PythonOptions, judge: Judge | None = None) -> None:
        super().__init__(name, options, judge)
        self.function = import_callable(options.function, f"python grader {name!r}")

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        result = self.function(sample, output)
        if inspect.isawaitable(result):
            result = await result
        return self.to_grade(result)

    def to_grade(self, result: Any) -> Grade:
        if isinstance(result, bool):
            return Grade(score=float(result), passed=result)
        if isinstance(result, (int, float)):
            return self._scored(float(result))
        if isinstance(result, dict) and "score" in result:
            grade = self._scored(float(result["score"]))
            if result.get("passed") is not None:
                grade.passed = bool(result["passed"])
            grade.label = result.get("label")
            grade.reasoning = result.get("reasoning")
            grade.details.update(result.get("details") or {})
            return grade
        raise TypeError(f"{self.options.function} returned {type(result).__name__}; expected "
                        "a bool, a number or a dict with a `score`")

    def _scored(self, raw: float) -> Grade:
        score = min(max(raw, 0.0), 1.0)
        details = {} if score == raw else {"raw_score": raw}
        return Grade(score=score, passed=score >= self.options.threshold, details=details)
