"""`keel distill promote`: put a student on a route — in shadow, as a canary, or in the router.

Keel reads keel.yaml once at start, so a promotion is a config change: `promote` builds the new
entry of the route (`models.R`, plus a provider and model for a student that is a GGUF file),
checks that the whole config still validates with it, prints it, and records the promotion in
the lineage (job, model, route, mode, share, and the eval run that approved it). With
`--write keel.yaml` it also edits the file: only one without comments (PyYAML, the only YAML
library Keel installs, cannot keep them), after a backup to `keel.yaml.bak`, written whole
and atomically; a file with comments is left alone and the snippet printed to paste by hand.

- shadow: the route's pipeline gains the `shadow` layer (keel.distill.shadow) in `mode: shadow`;
  its results go to an eval run created now, named in the layer's `run:`;
- canary: the same layer in `mode: serve`: `share` of the requests are answered by the student;
- router: the student becomes the `cheap` deployment group of the route's learned router
  (docs/router-learned.md), the route's own deployment(s) the `strong` group; the router model
  file comes from `keel router train` on the approving eval run (teacher vs student).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from keel.errors import ConfigError, InvalidRequest

MODES = ("shadow", "canary", "router")


def resolve_student(store, job_or_model: str, config, name: str | None = None
                    ) -> tuple[str | None, str, dict]:
    """(job id or None, the student's Keel model name, config additions for it). A job's
    result that is a GGUF path becomes a `local` provider and a model named `name` (default
    `distilled-<job id prefix>`)."""
    from keel.distill import lineage
    from keel.errors import NotFound

    job = None
    if job_or_model not in config.models:
        try:
            job = lineage.get_job(store, job_or_model)
        except NotFound:
            job = None
    if job is None:
        if job_or_model not in config.models:
            known = ", ".join(sorted(config.models)) or "none"
            raise InvalidRequest(f"{job_or_model!r} is neither a distillation job nor a model "
                                 f"of keel.yaml (models: {known})")
        return None, job_or_model, {}
    result = job.get("result_model")
    if not result:
        raise InvalidRequest(f"job {job['id']} has no result model (status {job['status']})")
    if result in config.models:
        return job["id"], result, {}
    if result.endswith(".gguf"):
        student = name or f"distilled-{job['id'][:8]}"
        return job["id"], student, {
            "providers": {student: {"kind": "local", "model_path": result}},
            "models": {student: {"provider": student}},
        }
    raise InvalidRequest(f"job {job['id']}'s result {result!r} is not a model of keel.yaml: "
                         f"add it under `models:` first")


def approving_run(store, job_id: str | None, approved_by: str | None) -> str | None:
    """The eval run that approved the promotion: --approved-by, else the job's latest
    `keel distill evaluate` run."""
    from keel.distill import lineage
    from keel.evals.runs import get_run

    if approved_by:
        return get_run(store, approved_by)["id"]
    if job_id:
        evaluations = (lineage.get_job(store, job_id).get("options") or {}).get("evaluations")
        if evaluations:
            return evaluations[-1]["eval_run_id"]
    return None


def route_entry(config, route: str, student: str, mode: str, *, share: float = 0.1,
                seed: int | None = None, judge: dict | None = None, run: str | None = None,
                additions: dict | None = None, model_file: str | None = None) -> dict:
    """The route's new `models.R` entry (as keel.yaml holds it)."""
    if mode not in MODES:
        raise InvalidRequest(f"mode: expected one of {', '.join(MODES)}")
    if route not in config.models:
        known = ", ".join(sorted(config.models)) or "none"
        raise InvalidRequest(f"no route {route!r} in keel.yaml (models: {known})")
    if route == student:
        raise InvalidRequest("the student cannot be promoted onto its own route")
    model = config.models[route]
    entry = model.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    student_spec = _student_spec(config, student, additions or {})
    if mode in ("shadow", "canary"):
        options: dict[str, Any] = {"student": student,
                                   "mode": "shadow" if mode == "shadow" else "serve",
                                   "share": share}
        if seed is not None:
            options["seed"] = seed
        if mode == "shadow":
            options["judge"] = judge or {"kind": "fuzzy_match"}
            if run:
                options["run"] = run
        layers = model.pipeline if model.pipeline is not None else config.pipeline
        entry["pipeline"] = [_layer(spec) for spec in layers if spec.name != "shadow"]
        entry["pipeline"].append({"shadow": options})
        return entry
    entry["router"] = _with_cheap_group(model, route, student_spec, model_file)
    return entry


def _student_spec(config, student: str, additions: dict) -> dict:
    spec = (additions.get("models") or {}).get(student)
    if spec is None:
        found = config.models.get(student)
        if found is None:
            raise InvalidRequest(f"no model {student!r} in keel.yaml")
        spec = {"provider": found.provider, "model": found.model}
    return {"provider": spec["provider"], "model": spec.get("model") or student}


def _with_cheap_group(model, route: str, student: dict, model_file: str | None) -> dict:
    router = dict(model.router or {})
    deployments = [dict(d) for d in router.get("deployments") or
                   [{"provider": model.provider, "model": model.model or route}]]
    groups = {d.get("group") for d in deployments}
    strong = (router.get("learned") or {}).get("strong", "strong")
    cheap = (router.get("learned") or {}).get("cheap", "cheap")
    if groups == {None}:
        for d in deployments:
            d["group"] = strong
    deployments = [d for d in deployments if d.get("group") != cheap]
    deployments.append({**student, "group": cheap})
    learned = dict(router.get("learned") or {})
    learned.setdefault("strong", strong)
    learned.setdefault("cheap", cheap)
    learned["model_file"] = model_file or learned.get("model_file") or f"router-{route}.npz"
    router.update(deployments=deployments, learned=learned)
    return router


def _layer(spec) -> Any:
    return spec.name if not spec.options else {spec.name: spec.options}


def snippet(route: str, entry: dict, additions: dict | None = None) -> dict:
    """The keel.yaml fragment: additions (a GGUF student's provider and model) and `models.R`."""
    out: dict[str, Any] = {}
    additions = additions or {}
    if additions.get("providers"):
        out["providers"] = dict(additions["providers"])
    out["models"] = {**(additions.get("models") or {}), route: entry}
    return out


def merged(raw: dict, fragment: dict) -> dict:
    """keel.yaml's mapping with the fragment in: providers and models added or replaced."""
    out = dict(raw)
    for section in ("providers", "models"):
        if section in fragment:
            out[section] = {**(raw.get(section) or {}), **fragment[section]}
    return out


def check(raw: dict, path: str = "keel.yaml"):
    """The merged config validated as Keel will at start (layers' options included)."""
    from pydantic import ValidationError

    from keel.config import KeelConfig, describe_validation_error, validate_components

    try:
        config = KeelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None
    validate_components(config, path)
    return config


def write_config(path: str | Path, fragment: dict) -> Path:
    """Edit keel.yaml in place (backup first, atomic replace); refuse a file with comments."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if _has_comments(text):
        raise ConfigError(f"{path} has comments, which rewriting it would lose (no round-trip "
                          f"YAML library is installed): paste the snippet above by hand")
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    new = merged(raw, fragment)
    check(new, str(path))
    if path.exists():
        path.with_name(path.name + ".bak").write_text(text)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(new, sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
    return path


def _has_comments(text: str) -> bool:
    """Whether a line holds a comment (a `#` inside quotes is not one; a `#` in a block
    scalar counts: refusing there is the safe side)."""
    return any(_trailing_comment(line) for line in text.splitlines())


def _trailing_comment(line: str) -> bool:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return True
    return False


def promote(store, config, *, job_or_model: str, route: str, mode: str, share: float = 0.1,
            seed: int | None = None, judge: dict | None = None, approved_by: str | None = None,
            name: str | None = None, raw_config: dict | None = None) -> dict:
    """Build the change, validate it against the config, record the promotion. Returns
    {snippet, yaml, promotion id, eval runs, and for router mode the training command}."""
    from keel.distill import lineage

    if not 0 < share <= 1:
        raise InvalidRequest("--share: expected a share in (0, 1]")
    job_id, student, additions = resolve_student(store, job_or_model, config, name)
    approved = approving_run(store, job_id, approved_by)
    model_file = f"router-{route}.npz" if mode == "router" else None
    base = raw_config if raw_config is not None else config.model_dump(
        mode="json", exclude_unset=True)

    def change(run: str | None) -> dict:
        entry = route_entry(config, route, student, mode, share=share, seed=seed, judge=judge,
                            run=run, additions=additions, model_file=model_file)
        return snippet(route, entry, additions)

    fragment = change(None)
    check(merged(base, fragment))  # before anything is stored
    shadow_run = None
    if mode == "shadow":
        shadow_run = _shadow_run(store, route, student, share, seed, judge)
        fragment = change(shadow_run)
    note = f"shadow results: eval run {shadow_run}" if shadow_run else None
    promotion = lineage.add_promotion(
        store, model=student, route=route, mode=mode, job_id=job_id,
        share=None if mode == "router" else share, eval_run_id=approved, note=note)
    out = {"promotion": promotion, "job_id": job_id, "student": student, "route": route,
           "mode": mode, "approved_by": approved, "shadow_run": shadow_run,
           "snippet": fragment, "yaml": yaml.safe_dump(fragment, sort_keys=False)}
    if mode == "router":
        runs = approved or "EVAL_RUN"
        out["train"] = (f"keel router train {runs} --strong teacher --cheap student "
                        f"--out {model_file}")
    return out


def _shadow_run(store, route: str, student: str, share: float, seed, judge) -> str:
    from keel.distill.shadow import ShadowOptions, create_shadow_run
    from keel.evals.graders import make_grader

    options = ShadowOptions(student=student, share=share, seed=seed,
                            **({"judge": judge} if judge else {}))
    spec = dict(options.judge)
    kind = spec.pop("kind", None)
    name = spec.pop("name", None) or "agreement"
    if not kind:
        raise InvalidRequest("--judge: a grader kind is needed")
    grader = make_grader(kind, name, spec, None)
    return create_shadow_run(store, route, options, name, grader)
