"""Eval suites: the YAML that says what to run, and how a variant turns a sample into a request.

    name: support-bot
    dataset: data/support.jsonl          # a JSONL/CSV file, or a stored dataset name[@version]
    config: keel.yaml                    # the gateway to run against (optional)
    variants:
      baseline: {model: support-bot}
      concise:
        model: support-bot
        prompt: "Answer in one sentence."            # a system prompt, or {system, messages}
        params: {temperature: 0, max_tokens: 60}
    graders:
      - {kind: includes, name: mentions-settings}
      - {kind: fact}
    judge: {model: smollm2}
    concurrency: 8
    repeats: 1
    retries: 2
    max_samples: 50                      # only the first 50 samples (optional)

Every model is strict (`extra="forbid"`): a typo fails before anything runs, with the file, the
field path and what was expected. Paths in the suite are relative to the suite file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from keel.config import describe_validation_error, read_yaml
from keel.errors import ConfigError
from keel.evals.base import Sample
from keel.messages import content_text

# Only these placeholders are filled in, so other braces (JSON examples) pass through untouched.
_PLACEHOLDER = re.compile(r"\{(input|context|metadata(?:\.[A-Za-z0-9_\-]+)+)\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptSpec(Strict):
    """A system prompt and/or a messages template, with {input}, {context}, {metadata.x}."""

    system: str | None = None
    messages: list[dict[str, Any]] | None = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages):
        for i, msg in enumerate(messages or ()):
            if not isinstance(msg.get("role"), str) or "content" not in msg:
                raise ValueError(f"messages[{i}]: each message needs a role and a content")
        return messages


class VariantSpec(Strict):
    model: str = Field(description="a Keel model name from the gateway config")
    prompt: PromptSpec | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt", mode="before")
    @classmethod
    def _system_shorthand(cls, value):
        return {"system": value} if isinstance(value, str) else value

    @field_validator("params")
    @classmethod
    def _no_overrides(cls, params):
        for key in ("model", "messages", "stream"):
            if key in params:
                raise ValueError(f"{key!r} is set by the suite, not in params")
        return params


class GraderSpec(BaseModel):
    """`kind` picks the grader; `name` defaults to the kind; other keys are its options."""

    model_config = ConfigDict(extra="allow")
    kind: str
    name: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        return self.name or self.kind


class JudgeSpec(Strict):
    model: str = Field("smollm2", description="the Keel model model-graded graders ask")


class Suite(Strict):
    name: str
    description: str | None = None
    dataset: str
    config: str | None = Field(None, description="keel.yaml of the gateway to run against")
    variants: dict[str, VariantSpec]
    graders: list[GraderSpec] = Field(min_length=1)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    concurrency: int = Field(8, ge=1, le=1024)
    repeats: int = Field(1, ge=1, le=100)
    retries: int = Field(2, ge=0, le=10)
    retry_backoff_s: float = Field(0.5, ge=0, description="first wait; doubles per retry")
    max_samples: int | None = Field(None, ge=1, description="only the dataset's first N samples")

    _base_dir: Path = PrivateAttr(default=Path("."))
    _source: str = PrivateAttr(default="<suite>")

    @field_validator("variants", mode="before")
    @classmethod
    def _variants_list(cls, value):
        # A list of variants (each with a `name`) reads as well as a mapping of them.
        if isinstance(value, list):
            out = {}
            for i, item in enumerate(value):
                if not isinstance(item, dict) or not item.get("name"):
                    raise ValueError(f"variants[{i}]: a listed variant needs a `name`")
                item = dict(item)
                name = str(item.pop("name"))
                if name in out:
                    raise ValueError(f"variants[{i}]: duplicate variant name {name!r}")
                out[name] = item
            return out
        return value

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, value):
        if not value:
            raise ValueError("at least one variant is needed")
        return value

    @field_validator("graders")
    @classmethod
    def _unique_graders(cls, graders):
        seen = set()
        for grader in graders:
            if grader.label in seen:
                raise ValueError(
                    f"two graders are named {grader.label!r}; give one a different `name`")
            seen.add(grader.label)
        return graders

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def located(self, base_dir: Path, source: str) -> Suite:
        self._base_dir, self._source = Path(base_dir).resolve(), source
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def dataset_path(self) -> Path | None:
        """The dataset file, or None when `dataset` names a stored dataset."""
        path = self.resolve(self.dataset)
        if path.exists() or path.suffix.lower() in (".jsonl", ".csv", ".json"):
            return path
        return None

    def config_path(self) -> Path | None:
        return self.resolve(self.config) if self.config else None

    def override(self, params: dict[str, Any], max_samples: int | None = None) -> Suite:
        """The CLI's overrides (`--max-tokens`, `--temperature`, `--seed`, `--max-samples`):
        `params` go on top of every variant's own."""
        for variant in self.variants.values():
            variant.params.update(params)
        if max_samples is not None:
            self.max_samples = max_samples
        return self


def load_suite(path: str | Path) -> Suite:
    return parse_suite(read_yaml(path), path)


def parse_suite(raw: Any, path: str | Path = "<suite>") -> Suite:
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None
    return suite.located(path.parent, str(path))


def is_suite(raw: Any) -> bool:
    """A Keel suite (rather than an OpenAI evals registry file) has `dataset` and `variants`."""
    return isinstance(raw, dict) and ("variants" in raw or "dataset" in raw)


# -- requests ------------------------------------------------------------------------------


def build_messages(variant: VariantSpec, sample: Sample) -> list[dict]:
    """The chat messages a variant sends for a sample: its template (or the sample's own
    messages), with its system prompt first."""
    prompt = variant.prompt
    if prompt is not None and prompt.messages:
        messages = [dict(m, content=fill(m["content"], sample)) if isinstance(m["content"], str)
                    else dict(m) for m in prompt.messages]
    else:
        messages = [dict(m) for m in sample.input]
    if prompt is not None and prompt.system:
        messages.insert(0, {"role": "system", "content": fill(prompt.system, sample)})
    return messages


def build_body(variant: VariantSpec, sample: Sample) -> dict:
    return {**variant.params, "model": variant.model, "messages": build_messages(variant, sample)}


def fill(template: str, sample: Sample) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key == "input":
            return input_text(sample)
        if key == "context":
            return context_text(sample)
        found: Any = sample.metadata
        for part in key.split(".")[1:]:
            found = found.get(part) if isinstance(found, dict) else None
        return "" if found is None else str(found)

    return _PLACEHOLDER.sub(value, template)


def input_text(sample: Sample) -> str:
    """The sample's question as text: the last user turn (the whole input when there is none)."""
    for msg in reversed(sample.input):
        if msg.get("role") == "user":
            return content_text(msg.get("content"))
    return "\n".join(content_text(m.get("content")) for m in sample.input)


def context_text(sample: Sample) -> str:
    if sample.context is None:
        return ""
    return sample.context if isinstance(sample.context, str) else "\n\n".join(sample.context)

