"""`keel distill evaluate`: teacher, base student and trained student on the held-out split.

One eval run with three variants (`teacher`, `base`, `student`), through the ordinary runner
(keel.evals.runner), so `keel eval show` / `keel eval compare RUN:teacher RUN:student` and the
console show it like any other run. The suite is either a file (its dataset, graders, judge and
its first variant's prompt and params are kept; only the three models change) or generated: the
training set's `test` split (a stored eval dataset `NAME-test@version`) and the graders given.

From the run's cells it reports, per grader:

- quality retained: the student's mean over the teacher's, with the means' 95% bootstrap
  intervals and the paired difference's (keel.evals.compare.grader_stats) and an interval for
  the ratio from the same resamples;
- cost per 1,000 requests of each variant (its cells' mean cost from `models.X.pricing`; a
  model without pricing, like the local student, costs 0) and the saving, teacher − student;
- p50 latency of each variant (the cells' wall time through the gateway).

With a job, the run id is added to the job's lineage (`options.evaluations`), and `keel distill
promote --approved-by RUN` records it on the promotion.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import ConfigError, InvalidRequest
from keel.evals.compare import LEVEL, RESAMPLES, SEED, grader_stats, sample_scores

VARIANTS = ("teacher", "base", "student")


@dataclass
class Plan:
    """What to evaluate: three Keel models, and where the samples come from."""

    teacher: str
    base: str
    student: str
    dataset: str | None = None  # a stored dataset name[@version]; None: the suite file's
    job_id: str | None = None
    set_id: str | None = None
    student_path: str | None = None  # a GGUF served by an added local provider


@dataclass
class Report:
    run_id: str
    plan: dict
    graders: dict[str, dict] = field(default_factory=dict)
    variants: dict[str, dict] = field(default_factory=dict)
    cost_saved_per_1k: float | None = None

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "plan": self.plan, "graders": self.graders,
                "variants": self.variants, "cost_saved_per_1k": self.cost_saved_per_1k}


# -- planning ------------------------------------------------------------------------------


def plan_for(store, *, job: str | None = None, teacher: str | None = None,
             base: str | None = None, student: str | None = None, set_ref: str | None = None,
             split: str = "test", own_dataset: bool = False) -> Plan:
    """The three models and the held-out dataset, from a job's lineage where one is given;
    options override it. With `own_dataset` (a suite file that names its dataset) the set's
    split is not needed: the lineage still gives the models and records the run."""
    from keel.distill import lineage

    record = lineage.get_job(store, job) if job else None
    if record is not None:
        base = base or record.get("base_model")
        student = student or record.get("result_model")
        set_ref = set_ref or record.get("set_id")
        if not student:
            raise InvalidRequest(f"job {record['id']} has no result model yet (status "
                                 f"{record['status']}); wait for it, or name --student")
    the_set = lineage.get_set(store, set_ref) if set_ref else None
    if the_set is not None and not teacher:
        source = the_set.get("source") or {}
        filters = source.get("filters") or {}
        teacher = (source.get("teacher") or filters.get("teacher") or filters.get("model")
                   or filters.get("route"))
    missing = [n for n, v in (("--teacher", teacher), ("--base", base), ("--student", student))
               if not v]
    if missing:
        raise InvalidRequest(f"name {', '.join(missing)} (or give a job whose lineage has them)")
    dataset = None
    if the_set is not None and not own_dataset:
        splits = the_set.get("splits") or {}
        if split not in splits:
            raise InvalidRequest(f"training set {the_set['name']} has no {split!r} split "
                                 f"(it has: {', '.join(splits) or 'none'})")
        entry = splits[split]
        if not entry.get("count") or not entry.get("version"):
            raise InvalidRequest(f"training set {the_set['name']}'s {split!r} split is empty")
        dataset = f"{entry['dataset']}@{entry['version']}"
    student_path = student if _is_gguf(student) else None
    return Plan(teacher=teacher, base=base, student=student, dataset=dataset,
                job_id=record["id"] if record else None,
                set_id=the_set["id"] if the_set else None, student_path=student_path)


def _is_gguf(name: str) -> bool:
    return name.endswith(".gguf") or ("/" in name and Path(name).exists())


def with_student(config, plan: Plan):
    """The gateway config, plus a local provider and model serving a GGUF student (a job's
    result path); the student is then the Keel model `distilled-student`."""
    if plan.student_path is None:
        return config
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw.setdefault("providers", {})["distilled-student"] = {
        "kind": "local", "model_path": str(Path(plan.student_path).expanduser().resolve())}
    raw.setdefault("models", {})["distilled-student"] = {"provider": "distilled-student"}
    plan.student = "distilled-student"
    return type(config).model_validate(raw)


def build_suite(plan: Plan, *, suite_path: str | None = None, graders: list[dict] | None = None,
                judge: str | None = None, max_samples: int | None = None, name: str | None = None):
    """The suite with three variants: a suite file's (its first variant's prompt and params)
    or one generated on the held-out split."""
    from keel.evals.suite import load_suite, parse_suite

    if suite_path:
        suite = load_suite(suite_path)
        first = next(iter(suite.variants.values()))
        template = first.model_dump(exclude_none=True, exclude={"model"})
        suite.variants = {}
        raw = suite.model_dump(exclude_none=True)
        raw["variants"] = {v: {**template, "model": getattr(plan, v)} for v in VARIANTS}
        if graders:
            raw["graders"] = graders
        if judge:
            raw["judge"] = {"model": judge}
        if max_samples:
            raw["max_samples"] = max_samples
        return parse_suite(raw, suite.source)
    if not plan.dataset:
        raise InvalidRequest("no held-out dataset: give a job or --set (whose test split is "
                             "used), or a --suite file")
    if not graders:
        raise InvalidRequest("name the graders with --grader (e.g. --grader fact, or "
                             "--grader includes), or give a --suite file")
    raw: dict[str, Any] = {
        "name": name or f"distill-{plan.dataset.partition('@')[0]}",
        "dataset": plan.dataset,
        "variants": {v: {"model": getattr(plan, v)} for v in VARIANTS},
        "graders": graders,
        "retry_backoff_s": 0.2,
    }
    if judge:
        raw["judge"] = {"model": judge}
    if max_samples:
        raw["max_samples"] = max_samples
    return parse_suite(raw, Path.cwd() / "<distill-evaluate>")


def parse_grader(text: str) -> dict:
    """`--grader KIND[:key=value,...]` (values read as YAML): {kind, ...options}."""
    import yaml

    kind, _, rest = text.partition(":")
    spec: dict[str, Any] = {"kind": kind.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise InvalidRequest(f"--grader {text!r}: options are key=value, comma-separated")
        spec[key.strip()] = yaml.safe_load(value)
    if not spec["kind"]:
        raise InvalidRequest(f"--grader {text!r}: no grader kind")
    return spec


# -- running and reading -------------------------------------------------------------------


async def evaluate(store, config, plan: Plan, suite, *, progress: bool = False,
                   config_path: str | None = None) -> Report:
    from keel.evals.runner import run_suite
    from keel.evals.runs import results

    for variant in VARIANTS:
        if getattr(plan, variant) not in config.models:
            known = ", ".join(sorted(config.models)) or "none"
            raise ConfigError(f"the {variant} model {getattr(plan, variant)!r} is not in the "
                              f"gateway config (models: {known})")
    outcome = await run_suite(suite, config, store, progress=progress, config_path=config_path)
    report = summarize(outcome.run_id, results(store, outcome.run_id), plan, config)
    if plan.job_id:
        record_on_job(store, plan.job_id, report)
    return report


def summarize(run_id: str, cells: list[dict], plan: Plan, config) -> Report:
    by_variant = {v: [c for c in cells if c["variant"] == v] for v in VARIANTS}
    scores = {v: sample_scores(by_variant[v]) for v in VARIANTS}
    report = Report(run_id=run_id, plan={v: getattr(plan, v) for v in VARIANTS}
                    | {"dataset": plan.dataset, "job_id": plan.job_id, "set_id": plan.set_id})
    for grader in scores["teacher"]:
        if grader not in scores["student"]:
            continue
        stats = grader_stats(scores["teacher"][grader], scores["student"][grader])
        base = scores["base"].get(grader)
        base_stats = grader_stats(scores["teacher"][grader], base) if base else None
        report.graders[grader] = {
            "n": stats["n"],
            "teacher": {"mean": stats["mean_a"], "ci": stats["ci_a"]},
            "student": {"mean": stats["mean_b"], "ci": stats["ci_b"]},
            "base": ({"mean": base_stats["mean_b"], "ci": base_stats["ci_b"]}
                     if base_stats else None),
            "student_minus_teacher": {"diff": stats["diff"], "ci": stats["ci_diff"]},
            "retained": _ratio(stats["mean_b"], stats["mean_a"]),
            "retained_ci": ratio_interval(scores["teacher"][grader], scores["student"][grader]),
            "base_retained": _ratio(base_stats["mean_b"], base_stats["mean_a"])
            if base_stats else None,
        }
    for variant in VARIANTS:
        report.variants[variant] = variant_costs(by_variant[variant], getattr(plan, variant),
                                                 config)
    teacher, student = report.variants["teacher"], report.variants["student"]
    if teacher["cost_per_1k"] is not None and student["cost_per_1k"] is not None:
        report.cost_saved_per_1k = teacher["cost_per_1k"] - student["cost_per_1k"]
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def ratio_interval(teacher: dict[str, float], student: dict[str, float]) -> list[float] | None:
    """95% interval of mean(student) / mean(teacher) over the same paired resamples as
    compare.grader_stats (same seed and count); resamples where the teacher scored 0 drop out."""
    ids = sorted(set(teacher) & set(student))
    if not ids:
        return None
    xa = np.array([teacher[i] for i in ids])
    xb = np.array([student[i] for i in ids])
    picks = np.random.default_rng(SEED).integers(0, len(ids), size=(RESAMPLES, len(ids)))
    boot_a, boot_b = xa[picks].mean(axis=1), xb[picks].mean(axis=1)
    keep = boot_a > 0
    if not keep.any():
        return None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(boot_b[keep] / boot_a[keep], [tail, 100 - tail])
    return [float(low), float(high)]


def variant_costs(cells: list[dict], model: str, config) -> dict:
    """Mean cost of a request × 1,000 (pricing from keel.yaml; none configured: 0), p50 latency,
    and how many cells failed."""
    model_config = config.models.get(model)
    pricing = getattr(model_config, "pricing", None)
    answered = [c for c in cells if c.get("error") is None]
    costs = []
    for cell in answered:
        if cell.get("cost_usd") is not None:
            costs.append(float(cell["cost_usd"]))
        elif pricing is not None:
            costs.append(pricing.cost(cell.get("prompt_tokens"), cell.get("completion_tokens")))
        else:
            costs.append(0.0)
    latencies = [float(c["latency_ms"]) for c in answered if c.get("latency_ms") is not None]
    return {
        "model": model,
        "cells": len(cells),
        "errors": len(cells) - len(answered),
        "pricing": pricing.model_dump() if pricing is not None else None,
        "cost_per_1k": 1000.0 * sum(costs) / len(costs) if costs else None,
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
    }


def record_on_job(store, job_id: str, report: Report) -> None:
    """Append the evaluation (run id, retained, cost saved) to the job's lineage."""
    from keel.distill import lineage

    job = lineage.get_job(store, job_id)
    options = dict(job.get("options") or {})
    options["evaluations"] = [*options.get("evaluations", []), {
        "eval_run_id": report.run_id, "at": time.time(),
        "retained": {g: s["retained"] for g, s in report.graders.items()},
        "cost_saved_per_1k": report.cost_saved_per_1k,
    }]
    lineage.update_job(store, job_id, options=options)
