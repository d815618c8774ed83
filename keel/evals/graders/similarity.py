"""The `similarity` grader: embedding cosine between the output and its closest ideal answer.

The output and every ideal are embedded in one call through the judge (`embedder` names one
from keel.yaml; `minilm` always exists). Vectors are unit length, so a dot product is the
cosine. score = the best cosine clipped to [0, 1]; passed = score >= threshold.

A threshold is a property of the embedder: 0.8 suits MiniLM on short answers, other models
spread their cosines differently — calibrate it on a few graded samples before trusting it.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from keel.evals.base import Grade, GraderOptions, Output, Sample
from keel.evals.graders.common import BaseGrader, no_ideal


class SimilarityOptions(GraderOptions):
    embedder: str = Field("minilm", description="an embedder named in keel.yaml")
    threshold: float = Field(0.8, ge=0, le=1)


class SimilarityGrader(BaseGrader):
    kind = "similarity"
    Options = SimilarityOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        ideals = sample.ideals()
        if not ideals:
            return no_ideal()
        embeddings = await self.judge.embed([output.text, *ideals], self.options.embedder)
        vectors = np.asarray(embeddings.vectors, dtype=np.float32)
        cosines = vectors[1:] @ vectors[0]
        best = int(np.argmax(cosines))
        cosine = float(cosines[best])
        score = min(max(cosine, 0.0), 1.0)
        return Grade(score=score, passed=score >= self.options.threshold,
                     details={"cosine": round(cosine, 6), "closest_ideal": ideals[best]})
