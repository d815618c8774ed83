"""The `classify` grader: OpenAI evals' model-graded classify, driven by a spec.

The spec's prompt is filled from the sample and the output, the judge answers, its choice is
read (modelgraded_spec.py), and the choice's score is the grade's score. `label` is the choice and
`reasoning` the judge's whole answer. An answer with no readable choice grades 0 with label
"__invalid__" (OpenAI evals gives it the lowest choice score, which is 0 for its specs too).

    graders:
      - kind: classify
        name: correct
        spec: closedqa                  # bundled name, or the path of a registry spec YAML
        args: {criteria: "correctness: Is the answer correct?"}
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from keel.errors import ConfigError
from keel.evals.base import Grade, Judge, Output, Sample
from keel.evals.graders.common import (
    INVALID,
    BaseGrader,
    content_text,
    ideal_text,
    transcript,
)
from keel.evals.graders.judge_call import JudgeOptions, ask
from keel.evals.graders.modelgraded_spec import (
    fill,
    load_spec,
    parse_choice,
    with_answer_prompt,
)

EvalType = Literal["cot_classify", "classify_cot", "classify"]


class ClassifySettings(JudgeOptions):
    eval_type: EvalType | None = Field(
        None, description="where the judge puts its choice; default: the spec's, else cot_classify")
    args: dict[str, str] = Field(
        default_factory=dict, description="values for the prompt's extra placeholders")
    choice_scores: dict[str, float] | None = Field(
        None, description="score per choice; default: the spec's")
    threshold: float | None = Field(
        None, description="passed when score >= this; default: the best choice's score")


class ClassifyOptions(ClassifySettings):
    spec: str = Field(description="a bundled spec (fact, closedqa) or a spec YAML file")


class ClassifyGrader(BaseGrader):
    kind = "classify"
    Options = ClassifyOptions
    # Used when neither the spec nor the options score the choices.
    default_scores: ClassVar[dict[str, float] | None] = None

    def __init__(self, name: str, options: ClassifySettings, judge: Judge | None = None) -> None:
        super().__init__(name, options, judge)
        self.spec = load_spec(self.spec_source())
        self.scores = options.choice_scores or self.spec.choice_scores or self.default_scores
        if self.scores is None:
            raise ConfigError(f"grader {name!r}: spec {self.spec.name!r} has no choice_scores; "
                              "give `choice_scores` in the grader's options")
        unscored = [c for c in self.spec.choice_strings if c not in self.scores]
        if unscored:
            raise ConfigError(f"grader {name!r}: choice_scores has no score for {unscored}")
        self.eval_type = options.eval_type or self.spec.eval_type or "cot_classify"
        self.threshold = max(self.scores.values()) if options.threshold is None \
            else options.threshold
        prompt = list(self.spec.prompt)
        # A spec with its own eval_type already tells the judge how to answer (closedqa).
        if self.spec.eval_type is None or "eval_type" in options.model_fields_set:
            prompt = with_answer_prompt(prompt, self.eval_type, self.spec.choice_strings)
        self.prompt = prompt

    def spec_source(self) -> str:
        return self.options.spec

    async def evaluate(self, sample: Sample, output: Output) -> Grade:
        messages = fill(self.prompt, self.prompt_values(sample, output))
        answer = await ask(self.judge, self.options, messages)
        choice = parse_choice(answer, self.spec.choice_strings, self.eval_type)
        if choice == INVALID:
            return Grade(score=0.0, passed=False, label=INVALID, reasoning=answer,
                         details={"error": "no choice among "
                                  f"{list(self.spec.choice_strings)} in the judge's answer"})
        score = self.scores[choice]
        return Grade(score=score, passed=score >= self.threshold, label=choice,
                     reasoning=answer.strip(), details={"choice": choice})

    def prompt_values(self, sample: Sample, output: Output) -> dict[str, str]:
        # Metadata first, so the suite's `args` and the sample's own fields win over it.
        values = {k: content_text(v) for k, v in sample.metadata.items()
                  if isinstance(v, (str, int, float))}
        values.update(self.options.args)
        values["ideal"] = ideal_text(sample)
        for field, output_name in self.spec.input_outputs.items():
            values[field] = transcript(sample.input) if field == "input" \
                else content_text(sample.metadata.get(field))
            values[output_name] = output.text
        return values

    def describe(self) -> dict:
        return {**super().describe(), "judge_model": self.options.model, "spec": self.spec.name,
                "prompt": self.prompt, "eval_type": self.eval_type,
                "choice_strings": list(self.spec.choice_strings), "choice_scores": self.scores,
                "threshold": self.threshold}
