"""Graders: each turns one sample and one output into a Grade (keel.evals.base).

    deterministic   match.py       exact, includes, fuzzy_match, regex
                    structured.py  json_valid, json_schema
                    numeric.py     numeric (a number within a tolerance)
                    similarity.py  similarity (embedding cosine to the closest ideal)
    model-graded    classify.py    classify (any OpenAI evals model-graded spec)
                    fact.py        fact (the evals `fact` spec, bundled)
                    rubric.py      rubric (a 1-5 scorecard with anchored levels)
                    rag.py         rag (faithfulness, context and answer relevance)
    yours           python.py      python (a function of sample and output)

    shared          common.py             the base class, failure labels, text helpers
                    judge_call.py         the judge's options, one request, reading its reply
                    modelgraded_spec.py   a model-graded spec: load, fill its prompt, read choices
                    bundled_specs.py      the `fact` and `closedqa` specs, verbatim from evals

All share one protocol (`Grader` in keel.evals.base) and are found by kind through the
`keel.graders` entry point group, so a package can add its own. Failures never stop a run: they
grade 0 with label "__error__" or "__invalid__" (see common.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from keel import plugins
from keel.config import describe_validation_error
from keel.errors import ConfigError
from keel.evals.base import Grader, Judge

__all__ = ["make_grader"]


def make_grader(kind: str, name: str | None, options: dict[str, Any], judge: Judge, *,
                judge_model: str | None = None) -> Grader:
    """The grader of `kind`, its options checked (unknown keys are an error). Raises
    ConfigError naming the grader, the option and what was expected.

    `judge_model` (the suite's `judge.model`) is the `model` of a model-graded grader whose
    options do not name one."""
    cls = plugins.load("keel.graders", kind, "grader kind")
    name = name or kind
    options = dict(options or {})
    if judge_model and "model" in cls.Options.model_fields:
        options.setdefault("model", judge_model)
    try:
        validated = cls.Options.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(f"grader {name!r} ({kind})", exc)) from None
    return cls(name, validated, judge)
