"""The `fact` grader: OpenAI evals' `fact` spec — does the answer agree with the expert's?

The judge compares the factual content of the output with the sample's ideal answer and picks:

    A  subset of the expert answer, fully consistent with it     score 0.5
    B  superset of the expert answer, fully consistent with it   score 0.5
    C  the same details as the expert answer                     score 1.0
    D  disagrees with the expert answer                          score 0.0
    E  differs, but not in a way that matters for factuality     score 1.0

The official spec scores nothing (evals only counts the choices), so these scores are Keel's:
full marks for the same facts, half for a consistent but partial or padded answer, none for a
contradiction. `choice_scores` overrides them; `threshold` (default 1.0: C or E) sets `passed`.
`label` is the letter, `reasoning` the judge's text.

    graders:
      - {kind: fact, model: smollm2}
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from keel.evals.graders.classify import ClassifyGrader, ClassifySettings, EvalType


class FactOptions(ClassifySettings):
    spec_path: str | None = Field(None, description="a fact-style spec YAML instead of the bundled")
    eval_type: EvalType = "cot_classify"


class FactGrader(ClassifyGrader):
    kind = "fact"
    Options = FactOptions
    default_scores: ClassVar[dict[str, float]] = {"A": 0.5, "B": 0.5, "C": 1.0, "D": 0.0, "E": 1.0}

    def spec_source(self) -> str:
        return self.options.spec_path or "fact"
