"""Guards measured like evals: run a guard configuration over labelled texts and score it.

    config, model = guard_config("keel.yaml", model="support")  # {"input": [...], ...}
    examples = load_examples("cases.jsonl")                 # one {"text", "label"} per line
    guards = await build_guards(config, runtime, stage="input")
    records = await run_guards(guards, examples, concurrency=16)
    metrics = score(records, examples, [g.name for g in guards])

A line's `label` says what should happen to its text:

    true / false (1 / 0)  some guard should act / no guard should act
    "pii"                 this guard should act (and the others should not)
    ["pii", "secrets"]    these guards should act
    (missing or null)     unlabelled: the guards' actions are shown, nothing is scored

"Acting" is any action but pass (block, redact, rewrite, repair, flag). Per guard, a boolean
label counts for every guard (each guard is measured as if it alone had to catch the positives;
run one guard with `--guard` to tune it on a set meant for it); a name or list counts as
positive for those guards only. The "any guard" row reads every label as a boolean: positive
when it is true or names a guard. A guard that raised is counted as an error, not as a
prediction. `to_eval_rows` turns the same records into eval results (one per text, a grade per
guard), so a saved run compares with `keel eval compare` like any other eval run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from keel.errors import ConfigError, InvalidRequest
from keel.guardrails.base import GuardContext, Stage

ANY = "any guard"  # the row of the whole configuration


# -- the configuration -------------------------------------------------------------------------


def guard_config(path: str | Path,
                 model: str | None = None) -> tuple[dict[str, list], str | None]:
    """(the guards, the model they belong to) of a keel.yaml (a model's `guardrails:`; the model
    is `model`, or the only one with guards) or of a file holding only
    `guardrails: {input: [...], output: [...]}` (no model)."""
    from keel.config import read_yaml

    raw = read_yaml(path)
    if "models" not in raw:
        if "guardrails" not in raw:
            raise ConfigError(f"{path}: expected `guardrails:` or `models:` at the top level")
        if model:
            raise InvalidRequest(f"{path} has no models; --model is for a keel.yaml")
        return _stages(raw["guardrails"], f"{path}: guardrails"), None
    models = raw.get("models") or {}
    guarded = [name for name, m in models.items() if isinstance(m, dict) and m.get("guardrails")]
    if model is None:
        if len(guarded) != 1:
            have = ", ".join(guarded) or "none"
            raise InvalidRequest(f"{path}: pick the model whose guards to test with --model "
                                 f"(models with guardrails: {have})")
        model = guarded[0]
    if model not in models:
        raise InvalidRequest(f"{path}: no model {model!r} (models: {', '.join(models)})")
    if model not in guarded:
        raise InvalidRequest(f"{path}: model {model!r} has no guardrails")
    return _stages(models[model]["guardrails"], f"{path}: models.{model}.guardrails"), model


def is_gateway_config(path: str | Path) -> bool:
    """Whether the file is a whole keel.yaml (its store and embedders apply), not just guards."""
    from keel.config import read_yaml

    return "models" in read_yaml(path)


def _stages(section: Any, where: str) -> dict[str, list]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping with `input:` and/or `output:`")
    found = {}
    for stage in ("input", "output"):
        entries = section.get(stage) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{where}.{stage}: expected a list of guards")
        found[stage] = entries
    return found


def entry_parts(entry: Any, where: str) -> tuple[str, str, dict]:
    """(kind, name, options) of one guard entry: `- pii`, `- pii: {action: redact}`, or
    `- {kind: regex, name: competitors, patterns: [...]}` (the layer's forms)."""
    if isinstance(entry, str):
        return entry, entry, {}
    if isinstance(entry, dict) and len(entry) == 1 and "kind" not in entry:
        (kind, options), = entry.items()
        options = dict(options or {})
    elif isinstance(entry, dict) and "kind" in entry:
        options = dict(entry)
        kind = options.pop("kind")
    else:
        raise ConfigError(f"{where}: expected a guard kind, `KIND: {{options}}` or a mapping "
                          f"with `kind:`")
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: the options of {kind!r} must be a mapping")
    name = options.pop("name", None) or kind
    return str(kind), str(name), options


def apply_overrides(config: dict[str, list], overrides: dict[str, Any]) -> dict[str, list]:
    """`--set NAME.OPTION=VALUE`: change one option of the guard(s) named NAME, for tuning."""
    out: dict[str, list] = {}
    used = set()
    for stage, entries in config.items():
        out[stage] = []
        for i, entry in enumerate(entries):
            kind, name, options = entry_parts(entry, f"guardrails.{stage}[{i}]")
            for key, value in overrides.items():
                guard, _, option = key.partition(".")
                if guard == name:
                    options[option] = value
                    used.add(key)
            out[stage].append({"kind": kind, "name": name, **options})
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise InvalidRequest(f"--set {unknown[0]}: no guard of that name in the configuration")
    return out


@dataclass
class StagedGuard:
    stage: Stage
    name: str  # unique in the run: the guard's name, `output.NAME` if both stages have it
    guard: Any


async def build_guards(config: dict[str, list], runtime, stage: Stage | None = None,
                       only: tuple[str, ...] = ()) -> list[StagedGuard]:
    """The guards to run, built and started; `stage` keeps one stage, `only` some names."""
    picked: list[tuple[Stage, Any]] = []
    for st in ("input", "output"):
        if stage and st != stage:
            continue
        for i, entry in enumerate(config.get(st) or []):
            kind, name, options = entry_parts(entry, f"guardrails.{st}[{i}]")
            if only and name not in only:
                continue
            picked.append((st, make_guard(kind, name, options, st, runtime,
                                           f"guardrails.{st}[{i}]")))
    if only:
        missing = sorted(set(only) - {g.name for _, g in picked})
        if missing:
            raise InvalidRequest(f"--guard {missing[0]}: no such guard in the configuration")
    if not picked:
        raise InvalidRequest("the configuration has no guards to test"
                             + (f" on the {stage} stage" if stage else ""))
    names = [g.name for _, g in picked]
    staged = [StagedGuard(st, f"{st}.{g.name}" if names.count(g.name) > 1 else g.name, g)
              for st, g in picked]
    for s in staged:
        start = getattr(s.guard, "start", None)
        if start is not None:
            await start()
    return staged


async def close_guards(guards: list[StagedGuard]) -> None:
    for s in guards:
        close = getattr(s.guard, "aclose", None)
        if close is not None:
            await close()


def make_guard(kind: str, name: str, options: dict, stage: Stage, runtime, where: str):
    """The guard as the layer would build it (registry.py: the same options, the same
    validation), listed under `stage`."""
    from pydantic import ValidationError

    from keel.guardrails.registry import GuardSpec, build_guard

    try:
        spec = GuardSpec.model_validate({"kind": kind, "name": name, **options})
    except ValidationError as exc:
        problem = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"{where}: {problem}") from None
    return build_guard(spec, stage, runtime)


# -- the data -----------------------------------------------------------------------------


@dataclass
class Example:
    id: str
    text: str
    label: bool | tuple[str, ...] | None  # None: unlabelled

    def expects(self, guard: str) -> bool | None:
        """Whether `guard` should act on this text (None: unlabelled)."""
        if self.label is None or isinstance(self.label, bool):
            return self.label
        return guard in self.label

    def expects_any(self) -> bool | None:
        if self.label is None or isinstance(self.label, bool):
            return self.label
        return bool(self.label)

    def ideal(self) -> str | list[str] | None:
        """The label as an eval sample's `ideal`: act, pass, or the guards that should act."""
        if self.label is None:
            return None
        if isinstance(self.label, bool):
            return "act" if self.label else "pass"
        return list(self.label) or "pass"


def load_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    examples, seen = [], set()
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InvalidRequest(f"{where}: expected an object with a string `text`")
            example = Example(str(record.get("id") or ""), record["text"],
                              _label(record.get("label"), where))
            if not example.id:
                example.id = "t" + hashlib.sha256(line.strip()).hexdigest()[:12]
            base, n = example.id, 1
            while example.id in seen:  # a repeated line: same text, same label
                n += 1
                example.id = f"{base}-{n}"
            seen.add(example.id)
            examples.append(example)
    if not examples:
        raise InvalidRequest(f"{path}: no texts")
    return examples


def _label(value: Any, where: str) -> bool | tuple[str, ...] | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # the usual form of classifier datasets
        return bool(value)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidRequest(f"{where}: label: expected true, false, a guard name or a list of "
                         f"names, got {value!r}")


# -- running ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one guard did to one text."""

    action: str
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str | None = None
    text: str | None = None  # rewrite: the new request; repair: what the model would be told

    @property
    def acted(self) -> bool:
        return self.error is None and self.action != "pass"


async def run_guards(guards: list[StagedGuard], examples: list[Example], *, runtime=None,
                     route=None, concurrency: int = 16,
                     advance: Callable[[], None] | None = None) -> list[dict[str, Outcome]]:
    """For each example (in order): guard name -> Outcome. At most `concurrency` checks run at
    once; `advance` is called as each text finishes (a progress bar). `route` is the model's
    route, for guards that ask its model (rewrite, the groundedness judge, upstream
    moderation)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(example: Example) -> dict[str, Outcome]:
        found = await asyncio.gather(*(_check(s, example.text, runtime, route, semaphore)
                                       for s in guards))
        if advance is not None:
            advance()
        return {s.name: o for s, o in zip(guards, found)}

    return list(await asyncio.gather(*(one(e) for e in examples)))


async def _check(staged: StagedGuard, text: str, runtime, route, semaphore) -> Outcome:
    body = {"model": getattr(route, "name", None), "messages": [{"role": "user", "content": text}]}
    if staged.stage == "output":
        body["messages"].append({"role": "assistant", "content": text})
    ctx = GuardContext(stage=staged.stage, body=body, runtime=runtime, state={}, route=route)
    async with semaphore:
        started = time.perf_counter()
        try:
            verdict = await staged.guard.check(text, ctx)
        except Exception as exc:  # measured, not fatal: the table shows which texts broke it
            return Outcome("error", latency_ms=_ms(started),
                           error=f"{type(exc).__name__}: {exc}")
        latency = _ms(started)
    return Outcome(verdict.action, list(verdict.reasons),
                   {k: float(v) for k, v in (verdict.scores or {}).items()}, latency,
                   verdict.error, verdict.text)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


# -- scoring ------------------------------------------------------------------------------


def confusion(pairs: list[tuple[bool, bool]]) -> dict:
    """Precision, recall and F1 of (expected, predicted) pairs; None where undefined."""
    tp = sum(1 for e, p in pairs if e and p)
    fp = sum(1 for e, p in pairs if not e and p)
    fn = sum(1 for e, p in pairs if e and not p)
    tn = sum(1 for e, p in pairs if not e and not p)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else
          (0.0 if precision is not None or recall is not None else None))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": f1}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None}
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95)}


def score(records: list[dict[str, Outcome]], examples: list[Example],
          names: list[str]) -> dict[str, dict]:
    """Per guard and for the whole configuration (`ANY`): texts, acted, errors, labelled,
    tp/fp/fn/tn, precision, recall, F1, latency p50/p95. A text's latency for `ANY` is the sum
    of its guards' (what they add when run one after another)."""
    out = {}
    for name in names:
        outcomes = [(e, r[name]) for e, r in zip(examples, records)]
        ok = [(e, o) for e, o in outcomes if o.error is None]
        labelled = [(e.expects(name), o.acted) for e, o in ok if e.expects(name) is not None]
        out[name] = {"texts": len(outcomes), "acted": sum(o.acted for _, o in ok),
                     "errors": len(outcomes) - len(ok), "labelled": len(labelled),
                     **confusion(labelled),
                     **percentiles([o.latency_ms for _, o in outcomes])}
    whole = []
    for e, r in zip(examples, records):
        if any(o.error for o in r.values()) or e.expects_any() is None:
            continue
        whole.append((e.expects_any(), any(o.acted for o in r.values())))
    out[ANY] = {"texts": len(records),
                "acted": sum(any(o.acted for o in r.values()) for r in records),
                "errors": sum(any(o.error for o in r.values()) for r in records),
                "labelled": len(whole), **confusion(whole),
                **percentiles([sum(o.latency_ms for o in r.values()) for r in records])}
    return out


# -- as an eval run -------------------------------------------------------------------------


def to_samples(examples: list[Example]):
    """The texts as eval samples (one user turn; the label as `ideal`), for the run store."""
    from keel.evals.base import Sample

    return [Sample(id=e.id, input=[{"role": "user", "content": e.text}], ideal=e.ideal())
            for e in examples]


def to_eval_rows(variant: str, records: list[dict[str, Outcome]],
                 examples: list[Example]) -> list[dict]:
    """One eval result per text, a grade per guard and one for the whole configuration.

    Labelled: score 1 when the guard did what the label says (acted on a positive, passed a
    negative), else 0, so a grade's mean is the accuracy and `keel eval compare` shows which
    texts a change fixed or broke. A file with no labels at all: score 1 when the guard acted
    (the mean is its action rate). In a file with labels, its unlabelled texts get no grades
    (a mean never mixes accuracy with action rate). The grade's `label` is the action taken."""
    rows = []
    now = time.time()
    labelled = any(e.label is not None for e in examples)
    for e, r in zip(examples, records):
        grades = {}
        if e.label is not None or not labelled:
            grades = {name: _grade(o.acted, e.expects(name), o) for name, o in r.items()}
            acted = any(o.acted for o in r.values())
            grades[ANY] = _grade(acted, e.expects_any(), None,
                                 label="act" if acted else "pass",
                                 error=next((o.error for o in r.values() if o.error), None))
        summary = ", ".join(f"{name}={o.action}" for name, o in r.items())
        rows.append({
            "variant": variant, "sample_id": e.id, "repeat": 0,
            "output": {"text": summary,
                       "guards": {name: _outcome_dict(o) for name, o in r.items()}},
            "error": None, "latency_ms": sum(o.latency_ms for o in r.values()),
            "grades": grades, "created_at": now,
        })
    return rows


def _grade(acted: bool, expected: bool | None, outcome: Outcome | None, *,
           label: str | None = None, error: str | None = None) -> dict:
    if outcome is not None:
        label, error = outcome.action, outcome.error
    if error is not None:
        return {"score": 0.0, "passed": False, "label": "__error__", "reasoning": None,
                "details": {"error": error}}
    details = {"acted": acted, "expected": expected}
    if outcome is not None:
        details.update(reasons=outcome.reasons, scores=outcome.scores)
    if expected is None:
        return {"score": float(acted), "passed": None, "label": label, "reasoning": None,
                "details": details}
    right = acted == expected
    return {"score": float(right), "passed": right, "label": label, "reasoning": None,
            "details": details}


def _outcome_dict(o: Outcome) -> dict:
    return {"action": o.action, "reasons": o.reasons, "scores": o.scores,
            "latency_ms": round(o.latency_ms, 3), "error": o.error, "text": o.text}


def describe(config: dict[str, list], *, config_path: str, model: str | None, stage: str | None,
             only: tuple[str, ...], overrides: dict, examples: list[Example]) -> dict:
    """The audit stored with a saved run: what decided its numbers."""
    return {"guard_test": {"config": config_path, "model": model, "stage": stage,
                           "guards": list(only), "set": overrides},
            "suite": {"name": "keel guard test", "file": config_path},
            "gateway_config": config_path,
            "guards": config, "labelled": sum(e.label is not None for e in examples)}


def save_run(store, *, suite: str, dataset_name: str, source: str, variant: str,
             examples: list[Example], records: list[dict[str, Outcome]], metrics: dict,
             audit: dict) -> str:
    """Store the run as an eval run (the texts imported as a dataset version, a result per
    text); returns its id. `summary` is the evals summary plus `guards`: the metrics."""
    import os

    from keel import __version__
    from keel.evals import runs
    from keel.evals.dataset_store import import_dataset
    from keel.evals.report import summarize

    name, version, _ = import_dataset(store, dataset_name, to_samples(examples), source)
    audit = {**audit, "dataset": {"name": name, "version": version, "samples": len(examples),
                                  "source": source},
             "variants": {variant: {"model": audit["guard_test"].get("model"),
                                    "params": audit["guard_test"].get("set") or {},
                                    "guards": audit["guards"]}}}
    run_id = runs.create_run(store, suite=suite, dataset_name=name, dataset_version=version,
                             config=audit, git_commit=runs.git_commit(os.getcwd()),
                             keel_version=__version__)
    rows = to_eval_rows(variant, records, examples)
    runs.write_results(store, run_id, rows)
    graders = next((list(r["grades"]) for r in rows if r["grades"]), [])
    summary = summarize(runs.results(store, run_id), graders)
    summary["guards"] = {variant: metrics}
    runs.finish_run(store, run_id, runs.FINISHED, summary)
    return run_id
