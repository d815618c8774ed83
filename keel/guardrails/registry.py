"""Guards from keel.yaml: each entry of `guardrails.input` / `.output` becomes a guard instance.

An entry is a guard kind, alone or with its options:

    - prompt_injection
    - pii: {action: pseudonymize}
    - denylist: {words: [acme corp], action: redact, name: competitors}   # `name` renames it

Kinds are found through the `keel.guards` entry points (`keel.plugins.load`), and the options
are validated into the guard's own `Options` when keel.yaml is loaded, so a bad option stops
start-up with its path (`models.bot.guardrails.input.0: pii.action: ...`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from keel.errors import ConfigError
from keel.guardrails.base import GuardOptions, Stage
from keel.plugins import load


def guard_class(kind: str) -> type:
    return load("keel.guards", kind, "guard kind")


class GuardSpec(BaseModel):
    """One entry of a guardrails list, its options already typed."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    kind: str
    name: str
    options: GuardOptions

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, GuardSpec):
            return value
        if isinstance(value, str):
            kind, raw = value, {}
        elif isinstance(value, dict) and len(value) == 1 and "kind" not in value:
            (kind, raw), = value.items()
            raw = raw or {}
        elif isinstance(value, dict) and "kind" in value:
            raw = dict(value)
            kind = raw.pop("kind")
            raw = {**raw.pop("options", {}), **raw}
        else:
            raise ValueError("expected a guard kind, or one `kind: {options}` mapping")
        if not isinstance(raw, dict):
            raise ValueError(f"{kind}: options must be a mapping (got {raw!r})")
        raw = dict(raw)
        name = raw.pop("name", None) or kind
        if isinstance(raw.get("options"), GuardOptions):
            return {"kind": kind, "name": name, "options": raw["options"]}
        try:
            options_cls = guard_class(kind).Options
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        except ImportError as exc:
            raise ValueError(f"guard kind {kind!r} cannot be loaded: {exc}") from None
        try:
            options = options_cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError("; ".join(_describe(kind, err) for err in exc.errors())) from None
        return {"kind": kind, "name": str(name), "options": options}


def _describe(kind: str, err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = "unknown option (not allowed here)" if err["type"] == "extra_forbidden" else \
        err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] != "extra_forbidden" and isinstance(got, (str, int, float)) and \
            len(repr(got)) < 80:
        msg += f" (got {got!r})"
    return f"{kind}.{loc}: {msg}" if loc else f"{kind}: {msg}"


def build_guard(spec: GuardSpec, stage: Stage, runtime: Any):
    """The guard instance for `spec`, listed under `stage`. Each instance knows its `name` and
    its stage (`options.stages`), so a kind listed under both stages is two guards."""
    cls = guard_class(spec.kind)
    options = spec.options.model_copy(update={"stages": (stage,)})
    guard = cls(spec.name, options, runtime)
    guard.stage = stage
    return guard
