"""The `rag` grader: is a retrieval-augmented answer grounded, and was retrieval any good?

Three metrics, each one judge call in JSON mode, each scored in [0, 1]:

    faithfulness       the judge splits the answer into claims and says of each whether the
                       context supports it; score = supported / claims (no claims: 1.0)
    context_relevance  of each retrieved passage, whether it is relevant to the question;
                       score = relevant / passages judged
    answer_relevance   whether the answer addresses the question: 1, 0.5 (partly) or 0

The context is the sample's `context`, else the texts of the output's citations (what Keel's
knowledge layer retrieved). Without any, the two context metrics are skipped (details say so).
`metrics` picks which run, `aggregate` (mean or min) combines them, passed = score >= threshold.
A metric whose judge answer cannot be read is left out and listed in details["invalid"]; when
none can be scored the grade is 0 with label "__invalid__" (or "__error__" when nothing could
be asked for lack of context).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from keel.evals.base import Grade, Output, Sample
from keel.evals.graders.common import (
    ERROR,
    INVALID,
    BaseGrader,
    context_passages,
    failed,
    find_json,
    question_text,
)
from keel.evals.graders.judge_call import JudgeOptions, ask, json_schema_format
from keel.evals.graders.rag_prompts import PROMPTS, SCHEMAS

Metric = Literal["faithfulness", "context_relevance", "answer_relevance"]
NEEDS_CONTEXT = {"faithfulness", "context_relevance"}


class RAGOptions(JudgeOptions):
    metrics: list[Metric] = Field(
        default_factory=lambda: ["faithfulness", "context_relevance", "answer_relevance"],
        min_length=1)
    aggregate: Literal["mean", "min"] = "mean"
    threshold: float = Field(0.75, ge=0, le=1)
    max_tokens: int = Field(1024, ge=1)

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[str]) -> list[str]:
        return list(dict.fromkeys(metrics))


class Unreadable(ValueError):
    """The judge's answer for a metric holds nothing usable."""


class RAGGrader(BaseGrader):
    kind = "rag"
    Options = RAGOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        question, passages = question_text(sample), context_passages(sample, output)
        results: dict[str, dict] = {}
        skipped, invalid = [], {}
        for metric in self.options.metrics:
            if metric in NEEDS_CONTEXT and not passages:
                skipped.append(metric)
                continue
            answer = await self._ask(metric, question, output.text, passages)
            try:
                results[metric] = READERS[metric](answer, len(passages))
            except Unreadable as exc:
                invalid[metric] = {"error": str(exc), "judge_answer": answer}
        details: dict[str, Any] = {"metrics": results}
        if skipped:
            details["skipped"] = {m: "no retrieved context" for m in skipped}
        if invalid:
            details["invalid"] = invalid
        if not results:
            if invalid:
                return Grade(score=0.0, passed=False, label=INVALID, details=details)
            return failed(ERROR, "no metric could be judged: the sample has no context and "
                          "the output no citations", **details)
        scores = [r["score"] for r in results.values()]
        score = sum(scores) / len(scores) if self.options.aggregate == "mean" else min(scores)
        return Grade(score=score, passed=score >= self.options.threshold, details=details)

    async def _ask(self, metric: str, question: str, answer: str, passages: list[str]) -> str:
        numbered = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
        system, template = PROMPTS[metric]
        # Plain replacement, not str.format: answers and passages may hold braces.
        user = (template.replace("<question>", question).replace("<answer>", answer)
                .replace("<context>", numbered))
        return await ask(self.judge, self.options,
                         [{"role": "system", "content": system},
                          {"role": "user", "content": user}],
                         json_schema_format(metric, SCHEMAS[metric]))

    def describe(self) -> dict:
        return {**super().describe(), "judge_model": self.options.model,
                "prompts": {m: list(PROMPTS[m]) for m in self.options.metrics}}


# -- reading the judge's answers ---------------------------------------------------------------


def _json(answer: str) -> dict:
    try:
        data = find_json(answer)
    except ValueError:
        raise Unreadable("no JSON in the judge's answer") from None
    if not isinstance(data, dict):
        raise Unreadable("the judge's JSON is not an object")
    return data


def yes_no(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value >= 0.5
    if isinstance(value, str):
        word = value.strip().casefold().rstrip(".")
        if word in ("yes", "true", "supported", "relevant", "y"):
            return True
        if word in ("no", "false", "unsupported", "not supported", "irrelevant", "n"):
            return False
    return None


def read_faithfulness(answer: str, _passages: int) -> dict:
    claims = _json(answer).get("claims")
    if not isinstance(claims, list):
        raise Unreadable("no `claims` list in the judge's answer")
    verdicts = []
    for item in claims:
        if isinstance(item, dict) and yes_no(item.get("supported")) is not None:
            verdicts.append({"claim": item.get("claim"), "supported": yes_no(item["supported"]),
                             "reasoning": item.get("reasoning")})
    if claims and not verdicts:
        raise Unreadable("no claim has a yes/no `supported` verdict")
    if not verdicts:  # nothing asserted, nothing unsupported: a refusal is faithful
        return {"score": 1.0, "claims": [], "note": "the answer makes no claims"}
    supported = sum(v["supported"] for v in verdicts)
    return {"score": supported / len(verdicts), "claims": verdicts}


def read_context_relevance(answer: str, passages: int) -> dict:
    items = _json(answer).get("passages")
    if not isinstance(items, list):
        raise Unreadable("no `passages` list in the judge's answer")
    judged = {}
    for position, item in enumerate(items, start=1):
        if not isinstance(item, dict) or yes_no(item.get("relevant")) is None:
            continue
        index = item.get("index", position)
        if isinstance(index, int) and 1 <= index <= passages:
            judged[index] = {"relevant": yes_no(item["relevant"]),
                             "reasoning": item.get("reasoning")}
    if not judged:
        raise Unreadable("no passage has a yes/no `relevant` verdict")
    result = {"score": sum(v["relevant"] for v in judged.values()) / len(judged),
              "passages": {str(i): judged[i] for i in sorted(judged)}}
    unjudged = [i for i in range(1, passages + 1) if i not in judged]
    if unjudged:
        result["unjudged"] = unjudged
    return result


def read_answer_relevance(answer: str, _passages: int) -> dict:
    data = _json(answer)
    value = data.get("score", data.get("relevant"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        score = min(max(float(value), 0.0), 1.0)
    elif yes_no(value) is not None:
        score = 1.0 if yes_no(value) else 0.0
    else:
        raise Unreadable("no `score` in the judge's answer")
    return {"score": score, "reasoning": data.get("reasoning")}


READERS = {"faithfulness": read_faithfulness, "context_relevance": read_context_relevance,
           "answer_relevance": read_answer_relevance}
