"""OpenAI evals model-graded specs: load one, fill its prompt, read the judge's choice.

A spec (as in the evals registry's `modelgraded/*.yaml`) is a prompt template, the
`choice_strings` the judge picks from, optional `choice_scores`, an optional `eval_type`, and
`input_outputs` — which sample field was the model's input and what its output is called in the
prompt (`{input: completion}`: the prompt's {input} is the sample's input, {completion} the
output). Other placeholders are {ideal} and any `args` (e.g. closedqa's {criteria}).

eval_type says where the judge's choice is:
    cot_classify   reasoning first, the choice on the last line (Keel's default)
    classify_cot   the choice first, then the reasoning
    classify       only the choice
When a spec's prompt does not ask for a format itself (no eval_type in the spec, like `fact`),
or the grader's options set one, an instruction for that format is appended to the prompt.

`fact` and `closedqa` are bundled (bundled_specs.py), so they work without the evals registry.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from keel.errors import ConfigError
from keel.evals.graders.bundled_specs import BUNDLED
from keel.evals.graders.common import INVALID

EVAL_TYPES = ("cot_classify", "classify_cot", "classify")

_ANSWER_PROMPTS = {
    "classify": "Answer with only one of {choices} (no quotes, no punctuation) and nothing else.",
    "classify_cot": (
        "First print only one of {choices} (no quotes, no punctuation) on a line of its own. "
        "Then, from the next line on, explain your reasoning step by step."),
    "cot_classify": (
        "First reason step by step, so that your conclusion is sound; do not state the answer "
        "at the outset. Then print only one of {choices} (no quotes, no punctuation) on a line "
        "of its own. Finally, repeat just that answer on a new line.\n\nReasoning:"),
}


@dataclass(frozen=True)
class ModelGradedSpec:
    name: str
    prompt: tuple[dict, ...]  # chat messages whose contents hold {placeholders}
    choice_strings: tuple[str, ...]
    input_outputs: dict[str, str]
    choice_scores: dict[str, float] | None = None
    eval_type: str | None = None

    @classmethod
    def from_mapping(cls, name: str, raw: dict[str, Any]) -> ModelGradedSpec:
        where = f"model-graded spec {name!r}"
        prompt = raw.get("prompt")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)):
            raise ConfigError(f"{where}: `prompt` must be a text or a list of chat messages")
        choices = raw.get("choice_strings")
        if isinstance(choices, str) and choices.startswith("from_n"):
            raise ConfigError(f"{where}: choice_strings {choices!r} (multi-completion specs) "
                              "are not supported")
        if isinstance(choices, list) and any(isinstance(c, bool) for c in choices):
            # YAML reads a bare Yes/No as a boolean.
            raise ConfigError(f"{where}: quote the choice_strings (\"Yes\", not Yes)")
        choices = [str(c) for c in (choices or ())]  # "ABCDE" reads as A, B, C, D, E
        if not choices:
            raise ConfigError(f"{where}: `choice_strings` is missing")
        scores = raw.get("choice_scores")
        if scores == "from_strings":
            scores = {c: float(c) for c in choices}
        if scores is not None:
            scores = {str(k): float(v) for k, v in scores.items()}
            missing = [c for c in choices if c not in scores]
            if missing:
                raise ConfigError(f"{where}: choice_scores has no score for {missing}")
        eval_type = raw.get("eval_type")
        if eval_type is not None and eval_type not in EVAL_TYPES:
            raise ConfigError(f"{where}: eval_type {eval_type!r} is not one of {EVAL_TYPES}")
        input_outputs = raw.get("input_outputs") or {"input": "completion"}
        return cls(name=name, prompt=tuple(dict(m) for m in prompt),
                   choice_strings=tuple(choices), input_outputs=dict(input_outputs),
                   choice_scores=scores, eval_type=eval_type)

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": list(self.prompt),
                "choice_strings": list(self.choice_strings), "choice_scores": self.choice_scores,
                "input_outputs": self.input_outputs, "eval_type": self.eval_type}


def load_spec(source: str | Path) -> ModelGradedSpec:
    """A bundled spec by name ("fact", "closedqa"), or a registry spec YAML file by path."""
    if isinstance(source, str) and source in BUNDLED:
        return parse_spec(BUNDLED[source], source)
    path = Path(source).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        known = ", ".join(sorted(BUNDLED))
        raise ConfigError(f"model-graded spec {str(source)!r}: not a bundled spec ({known}) "
                          f"and not a readable file ({exc.strerror})") from None
    return parse_spec(text, path.stem, where=str(path))


def parse_spec(text: str, name: str, where: str | None = None) -> ModelGradedSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where or name}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or name}: expected a mapping")
    # Registry files wrap the spec in its name: {fact: {prompt: ...}}.
    if "prompt" not in raw and len(raw) == 1:
        (name, raw), = raw.items()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or name}: expected a mapping")
    return ModelGradedSpec.from_mapping(name, raw)


# -- prompts -----------------------------------------------------------------------------------


def choices_text(choices: tuple[str, ...] | list[str]) -> str:
    return " or ".join(f'"{c}"' for c in choices)


def with_answer_prompt(messages: list[dict], eval_type: str, choices) -> list[dict]:
    """The messages with the instruction for `eval_type` added to the last one."""
    instruction = _ANSWER_PROMPTS[eval_type].format(choices=choices_text(choices))
    last = dict(messages[-1], content=messages[-1]["content"] + "\n\n" + instruction)
    return [*messages[:-1], last]


def placeholders(messages: list[dict]) -> set[str]:
    return {field for m in messages for _, field, _, _ in string.Formatter().parse(m["content"])
            if field}


def fill(messages: list[dict], values: dict[str, str]) -> list[dict]:
    """Each content formatted with `values` (templates escape literal braces as {{ }}, like
    OpenAI's). Raises KeyError naming what is missing."""
    missing = placeholders(messages) - set(values)
    if missing:
        raise KeyError(f"the prompt needs {', '.join(f'{{{m}}}' for m in sorted(missing))}; "
                       "give it in the grader's `args`")
    return [dict(m, content=m["content"].format_map(values)) for m in messages]


# -- reading the choice ------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def parse_choice(text: str, choices, eval_type: str = "cot_classify") -> str:
    """The choice the judge made, or INVALID.

    Where the format puts it (the last line for cot_classify, the first otherwise): a line that
    is just a choice, then that line's last or first word; failing that, the last (first)
    standalone occurrence of a choice anywhere. One-letter choices are matched case-sensitively
    so that the article "a" does not read as choice "A"; longer ones ("Yes") in any case.
    """
    lines = [line.translate(_PUNCTUATION).split() for line in text.strip().splitlines()]
    lines = [words for words in lines if words]
    if not lines:
        return INVALID
    answer_last = eval_type.startswith("cot")
    ordered = lines[::-1] if answer_last else lines
    for words in ordered:
        found = _pick(" ".join(words), choices)
        if found:
            return found
    edge = ordered[0]
    for word in (edge[-1], edge[0]) if answer_last else (edge[0], edge[-1]):
        found = _pick(word, choices)
        if found:
            return found
    return _occurrence(text, choices, last=answer_last) or INVALID


def _same(candidate: str, choice: str) -> bool:
    return candidate == choice if len(choice) == 1 else candidate.casefold() == choice.casefold()


def _pick(candidate: str, choices) -> str | None:
    return next((c for c in choices if _same(candidate, c)), None)


def _occurrence(text: str, choices, last: bool) -> str | None:
    hits = []
    for choice in choices:
        flags = 0 if len(choice) == 1 else re.IGNORECASE
        pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(choice)}(?![A-Za-z0-9])", flags)
        hits += [(m.start(), choice) for m in pattern.finditer(text)]
    if not hits:
        return None
    return (max if last else min)(hits)[1]
