"""The `rubric` grader: a scorecard of criteria, each scored 1-5 by the judge.

Each criterion says what it measures and, to show rather than tell, gives example answers for
some score levels (`anchors`): a judge, small models most of all, scores far more consistently
against examples than against adjectives. The judge writes its reasoning before each score and
answers in JSON (the request carries a json_schema `response_format`, so Keel's json_mode layer
checks it); its answer is still read defensively: JSON anywhere in the text, else lines like
"correctness: 4". Scores are clamped to 1-5.

score = the weighted mean over the criteria the judge scored, each mapped to [0, 1] as
(s - 1) / 4; criteria it left out are listed in details["missing"]. passed = score >= threshold.
Nothing readable at all grades 0 with label "__invalid__".
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from keel.evals.base import Grade, GraderOptions, Output, Sample
from keel.evals.graders.common import (
    INVALID,
    BaseGrader,
    context_passages,
    find_json,
    ideal_text,
    transcript,
)
from keel.evals.graders.judge_call import JudgeOptions, ask, json_schema_format
from keel.evals.graders.rubric_defaults import (
    DEFAULT_CRITERIA,
    DEFAULT_EXAMPLE_QUESTION,
)

SYSTEM = (
    "You are a strict and fair grader. You score one answer on each criterion of a scorecard, "
    "from 1 (worst) to 5 (best), using the example answers as the standard for each level. "
    "For every criterion, first explain your reasoning, then give the score. "
    "Reply with JSON only.")


class Criterion(GraderOptions):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\- ]*$")
    description: str
    anchors: dict[int, str] = Field(
        default_factory=dict, description="score level (1-5) -> an example answer at that level")
    weight: float = Field(1.0, gt=0)

    @field_validator("anchors")
    @classmethod
    def _levels(cls, anchors: dict[int, str]) -> dict[int, str]:
        bad = [level for level in anchors if not 1 <= level <= 5]
        if bad:
            raise ValueError(f"anchor levels must be 1-5, got {bad}")
        return dict(sorted(anchors.items(), reverse=True))


class RubricOptions(JudgeOptions):
    criteria: list[Criterion] = Field(
        default_factory=lambda: [Criterion(**c) for c in DEFAULT_CRITERIA], min_length=1)
    example_question: str | None = Field(
        DEFAULT_EXAMPLE_QUESTION, description="the question the anchor answers reply to")
    threshold: float = Field(0.75, ge=0, le=1)
    max_tokens: int = Field(1024, ge=1)

    @field_validator("criteria")
    @classmethod
    def _unique(cls, criteria: list[Criterion]) -> list[Criterion]:
        names = [c.name.casefold() for c in criteria]
        if len(set(names)) != len(names):
            raise ValueError("criterion names must be unique")
        return criteria


class RubricGrader(BaseGrader):
    kind = "rubric"
    Options = RubricOptions

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        answer = await ask(self.judge, self.options, self.messages(sample, output),
                           json_schema_format("scorecard", self.schema()))
        criteria = self.options.criteria
        found = read_scores(answer, [c.name for c in criteria])
        missing = [c.name for c in criteria if c.name not in found]
        if not found:
            return Grade(score=0.0, passed=False, label=INVALID, reasoning=answer,
                         details={"error": "no criterion score in the judge's answer",
                                  "missing": missing})
        scored = [c for c in criteria if c.name in found]
        total = sum(c.weight for c in scored)
        score = sum(c.weight * (found[c.name]["score"] - 1) / 4 for c in scored) / total
        reasoning = "\n".join(f"{name}: {v['reasoning']}" for name, v in found.items()
                              if v.get("reasoning"))
        details: dict[str, Any] = {"criteria": found}
        if missing:
            details["missing"] = missing
        return Grade(score=score, passed=score >= self.options.threshold,
                     reasoning=reasoning or answer, details=details)

    def messages(self, sample: Sample, output: Output) -> list[dict]:
        parts = [f"[Question]\n{transcript(sample.input)}"]
        if sample.ideals():
            parts.append(f"[Reference answer]\n{ideal_text(sample)}")
        passages = context_passages(sample, output)
        if passages:
            parts.append("[Context]\n" + "\n\n".join(passages))
        parts.append(f"[Answer to grade]\n{output.text}")
        parts.append("[Scorecard]\n" + self.scorecard())
        names = ", ".join(c.name for c in self.options.criteria)
        parts.append(
            f"Reply with a JSON object with one key per criterion ({names}); each value is "
            '{"reasoning": "<why, first>", "score": <integer 1-5>}.')
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "\n\n".join(parts)}]

    def scorecard(self) -> str:
        blocks = []
        for c in self.options.criteria:
            lines = [f"## {c.name}", c.description]
            if c.anchors:
                question = self.options.example_question
                lines.append(f'Example answers to "{question}":' if question
                             else "Example answers:")
                lines += [f"- score {level}: {text}" for level, text in c.anchors.items()]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def schema(self) -> dict:
        # Reasoning is listed before score so that a model decoding in order reasons first.
        item = {"type": "object", "additionalProperties": False,
                "properties": {"reasoning": {"type": "string"},
                               "score": {"type": "integer", "minimum": 1, "maximum": 5}},
                "required": ["reasoning", "score"]}
        names = [c.name for c in self.options.criteria]
        return {"type": "object", "additionalProperties": False,
                "properties": {n: item for n in names}, "required": names}

    def describe(self) -> dict:
        return {**super().describe(), "judge_model": self.options.model, "system": SYSTEM,
                "scorecard": self.scorecard(), "schema": self.schema()}


def read_scores(text: str, names: list[str]) -> dict[str, dict]:
    """criterion -> {"score": 1-5, "reasoning": str | None} for each one found in `text`."""
    found: dict[str, dict] = {}
    try:
        data = find_json(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        data = _unwrap(data, names)
        keyed = {str(k).casefold(): v for k, v in data.items()}
        for name in names:
            value = keyed.get(name.casefold())
            reasoning = None
            if isinstance(value, dict):
                reasoning, value = value.get("reasoning"), value.get("score")
            score = _number(value)
            if score is not None:
                found[name] = {"score": _clamp(score), "reasoning": reasoning}
    for name in names:
        if name not in found:
            hits = re.findall(rf"{re.escape(name)}\W{{0,4}}(?:score)?\W{{0,4}}(\d+(?:\.\d+)?)",
                              text, re.IGNORECASE)
            if hits:
                found[name] = {"score": _clamp(float(hits[-1])), "reasoning": None}
    return found


def _unwrap(data: dict, names: list[str]) -> dict:
    """Judges sometimes nest the scorecard one level down ({"scores": {...}})."""
    wanted = {n.casefold() for n in names}
    if not wanted & {str(k).casefold() for k in data} and len(data) == 1:
        inner = next(iter(data.values()))
        if isinstance(inner, dict):
            return inner
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.search(r"\d+(?:\.\d+)?", value)
        return float(match.group(0)) if match else None
    return None


def _clamp(score: float) -> float:
    return min(max(score, 1.0), 5.0)
