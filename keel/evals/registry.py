"""Run an OpenAI evals registry YAML as it is: each eval in it becomes an equivalent Keel suite.

A registry keeps `evals/` (the YAML), `data/` (samples) and `modelgraded/` (judge specs) side
by side; `samples_jsonl` is relative to `data/`, `modelgraded_spec: fact` names
`modelgraded/fact.yaml`. An eval is an alias (`coqa-match: {id: coqa-match.dev.v0}`) pointing at
its versioned entry, whose `class` says how it grades:

    evals.elsuite.basic.match:Match                    exact, prefix, case-sensitive (startswith)
    evals.elsuite.basic.includes:Includes              includes (`ignore_case` honoured)
    evals.elsuite.basic.fuzzy_match:FuzzyMatch         fuzzy_match
    evals.elsuite.modelgraded.classify:ModelBasedClassify
                                                       classify with the spec file, its
                                                       `eval_type` and `modelgraded_spec_args`
                                                       (the fact spec: Keel's `fact` grader,
                                                       which scores its choices)

The model under test is one variant named after it; the judge of a model-graded eval is that
same model unless another is given (as `oaieval` does without a second completion function).

Answers are capped: `max_tokens` is the eval's own `args.max_tokens` if it has one, else
DEFAULT_MAX_TOKENS (512), and `--max-tokens` overrides both. Without a cap a small local model
can loop until its context is full, and the judge's prompt, which quotes the answer, then no
longer fits. `params` (the CLI's --max-tokens, --temperature, --seed) go on top;
`max_samples` keeps the first N samples of the file (oaieval's --max_samples takes N after a
seeded shuffle; Keel keeps file order so a run is easy to reproduce and extend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.config import read_yaml
from keel.errors import ConfigError
from keel.evals.suite import Suite, parse_suite

_CLASSES = {
    "evals.elsuite.basic.match:Match": "match",
    "evals.elsuite.basic.includes:Includes": "includes",
    "evals.elsuite.basic.fuzzy_match:FuzzyMatch": "fuzzy_match",
    "evals.elsuite.modelgraded.classify:ModelBasedClassify": "classify",
}

DEFAULT_MAX_TOKENS = 512  # an answer's cap when neither the eval nor the user sets one


class RegistryEval:
    """One eval of a registry file: its alias, versioned id, class and args."""

    def __init__(self, alias: str, eval_id: str, cls: str, args: dict) -> None:
        self.alias, self.id, self.cls, self.args = alias, eval_id, cls, args

    @property
    def supported(self) -> bool:
        return self.cls in _CLASSES


def read_registry(path: str | Path) -> dict:
    return read_yaml(path)


def is_registry(raw: Any) -> bool:
    return isinstance(raw, dict) and bool(raw) and all(
        isinstance(v, dict) and ("id" in v or "class" in v) for v in raw.values())


def registry_evals(raw: dict, path: Path) -> list[RegistryEval]:
    found = []
    for alias, entry in raw.items():
        if "id" not in entry:
            continue  # a versioned entry; reached through its alias
        target = raw.get(entry["id"])
        if not isinstance(target, dict) or "class" not in target:
            raise ConfigError(f"{path}: {alias}: id {entry['id']!r} has no entry with a class")
        found.append(RegistryEval(str(alias), str(entry["id"]), str(target["class"]),
                                  dict(target.get("args") or {})))
    return found


def registry_root(path: Path) -> Path:
    """The folder holding evals/, data/ and modelgraded/ (the YAML may sit deeper in evals/)."""
    for parent in path.resolve().parents:
        if parent.name == "evals" and (parent.parent / "data").is_dir():
            return parent.parent
    raise ConfigError(f"{path}: not inside a registry's evals/ folder (with data/ beside it)")


def load_registry_suites(path: str | Path, model: str, *, eval_name: str | None = None,
                         judge_model: str | None = None,
                         config: str | None = None, max_samples: int | None = None,
                         params: dict[str, Any] | None = None) -> list[Suite]:
    """A Keel suite for each eval of the file (or just `eval_name`, an alias or an id).

    `params` (max_tokens, temperature, seed, ...) override what the eval sends with each
    answer request; `max_samples` keeps only the first N samples."""
    path = Path(path)
    raw = read_registry(path)
    evals = registry_evals(raw, path)
    if eval_name:
        evals = [e for e in evals if eval_name in (e.alias, e.id)]
        if not evals:
            names = ", ".join(e.alias for e in registry_evals(raw, path))
            raise ConfigError(f"{path}: no eval {eval_name!r} (evals: {names})")
        if not evals[0].supported:
            raise ConfigError(f"{path}: {eval_name}: class {evals[0].cls} is not supported "
                              f"(supported: {', '.join(sorted(_CLASSES))})")
    evals = [e for e in evals if e.supported]
    if not evals:
        raise ConfigError(f"{path}: no eval with a supported class "
                          f"({', '.join(sorted(_CLASSES))})")
    root = registry_root(path)
    return [to_suite(e, root, path, model, judge_model or model, config,
                     max_samples=max_samples, params=params) for e in evals]


def to_suite(ev: RegistryEval, root: Path, path: Path, model: str, judge_model: str,
             config: str | None, *, max_samples: int | None = None,
             params: dict[str, Any] | None = None) -> Suite:
    where = f"{path}: {ev.alias}"
    samples = ev.args.get("samples_jsonl")
    if not samples:
        raise ConfigError(f"{where}: args.samples_jsonl is missing")
    dataset = root / "data" / samples
    if not dataset.is_file():
        raise ConfigError(f"{where}: args.samples_jsonl: no file {dataset}")
    if ev.args.get("num_few_shot"):
        raise ConfigError(f"{where}: few-shot evals (num_few_shot) are not supported")
    kind = _CLASSES[ev.cls]
    answer_params: dict[str, Any] = {"temperature": 0} if kind in ("match", "fuzzy_match") else {}
    answer_params["max_tokens"] = _max_tokens(ev, where)
    answer_params.update(params or {})
    raw = {
        "name": ev.alias,
        "description": f"OpenAI evals {ev.id} ({ev.cls})",
        "dataset": str(dataset),
        "variants": {model: {"model": model, "params": answer_params}},
        "graders": [_grader(ev, kind, root, where)],
        "judge": {"model": judge_model},
    }
    if config:
        raw["config"] = str(Path(config).resolve())
    if max_samples is not None:
        raw["max_samples"] = max_samples
    return parse_suite(raw, path)


def _max_tokens(ev: RegistryEval, where: str) -> int:
    found = ev.args.get("max_tokens")
    if found is None:
        return DEFAULT_MAX_TOKENS
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ConfigError(f"{where}: args.max_tokens must be a positive integer, not {found!r}")
    return found


def _grader(ev: RegistryEval, kind: str, root: Path, where: str) -> dict:
    if kind == "match":
        return {"kind": "exact", "name": "match", "prefix": True, "case_sensitive": True}
    if kind == "includes":
        return {"kind": "includes", "case_sensitive": not ev.args.get("ignore_case", False)}
    if kind == "fuzzy_match":
        return {"kind": "fuzzy_match"}
    spec_name = ev.args.get("modelgraded_spec")
    if not spec_name:
        raise ConfigError(f"{where}: args.modelgraded_spec is missing")
    spec = root / "modelgraded" / f"{spec_name}.yaml"
    if not spec.is_file():
        raise ConfigError(f"{where}: args.modelgraded_spec: no file {spec}")
    # Keel's `fact` grader is classify on the fact spec with scores for its choices (the
    # official spec has none); any other spec runs through `classify` as it is.
    if spec_name == "fact":
        grader: dict[str, Any] = {"kind": "fact", "name": "fact", "spec_path": str(spec)}
    else:
        grader = {"kind": "classify", "name": spec_name, "spec": str(spec)}
    if ev.args.get("eval_type"):
        grader["eval_type"] = ev.args["eval_type"]
    if ev.args.get("modelgraded_spec_args"):
        grader["args"] = {k: str(v) for k, v in ev.args["modelgraded_spec_args"].items()}
    return grader
