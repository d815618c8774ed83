"""CI gates on a finished run: `--fail-under GRADER=SCORE` and `--max-regression GRADER=DROP`.

A gate fails when, for any variant, a grader's mean is below its floor, or has fallen by more
than the allowed drop from the baseline run (`--baseline RUN`, else the previous finished run of
the same suite). Variants are matched to the baseline's by name. Without any baseline the
regression gate is skipped with a note, so the first run of a new suite can pass.
"""

from __future__ import annotations

from keel.errors import InvalidRequest
from keel.evals import runs


def check_gates(store, suite: str, run_id: str, summary: dict, fail_under: dict[str, float],
                max_regression: dict[str, float], baseline: str | None = None) -> dict:
    variants = summary.get("variants") or {}
    known = {g for v in variants.values() for g in v["graders"]}
    for grader in [*fail_under, *max_regression]:
        if grader not in known:
            raise InvalidRequest(f"no grader {grader!r} in this run (graders: "
                                 f"{', '.join(sorted(known)) or 'none'})")
    failures, notes = [], []
    for variant, v in variants.items():
        for grader, floor in fail_under.items():
            mean = v["graders"].get(grader, {}).get("mean")
            if mean is None or mean < floor:
                failures.append(f"--fail-under {grader}={floor:g}: variant {variant} has mean "
                                f"{_f(mean)} < {floor:g}")
    if max_regression:
        base = runs.get_run(store, baseline) if baseline else runs.previous_run(store, suite,
                                                                                run_id)
        if base is None:
            notes.append(f"--max-regression: no earlier finished run of suite {suite!r} to "
                         f"compare with; skipped")
        else:
            failures += _regressions(base, variants, max_regression, notes)
    return {"passed": not failures, "checked": bool(fail_under or max_regression),
            "failures": failures, "notes": notes}


def _regressions(base: dict, variants: dict, allowed: dict[str, float], notes: list) -> list:
    failures = []
    base_variants = (base.get("summary") or {}).get("variants") or {}
    for variant, v in variants.items():
        before = base_variants.get(variant)
        if before is None:
            notes.append(f"--max-regression: baseline run {base['id']} has no variant "
                         f"{variant!r}; not checked")
            continue
        for grader, drop in allowed.items():
            old = before["graders"].get(grader, {}).get("mean")
            new = v["graders"].get(grader, {}).get("mean")
            if old is None:
                notes.append(f"--max-regression: baseline has no {grader!r} for {variant}")
                continue
            fell = old - (new or 0.0)
            if fell > drop + 1e-12:
                failures.append(
                    f"--max-regression {grader}={drop:g}: variant {variant} fell {fell:.3f} "
                    f"({_f(old)} → {_f(new)}) from baseline run {base['id']}")
    return failures


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"
