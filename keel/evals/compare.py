"""Two runs side by side: per grader, means with bootstrap confidence intervals, and the samples
that got worse or better.

Variants are paired by name (a variant `baseline` in run A with `baseline` in run B); a single
variant on each side pairs by itself; `RUN:VARIANT` names one explicitly, which also compares two
variants of one run. Per pair and grader, a sample's score is its mean over repeats; only samples
present in both runs count. The intervals are a paired percentile bootstrap over samples (1,000
resamples, seeded, so the same runs always print the same numbers): the same resampled samples
give A's mean, B's mean and their difference. A sample *regressed* when any grader's score fell,
*improved* when none fell and at least one rose.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from keel.errors import InvalidRequest
from keel.evals.report import message_text, output_text

RESAMPLES, SEED, LEVEL = 1000, 0, 0.95
_EPS = 1e-9


def pair_variants(variants_a: list[str], variants_b: list[str], want_a: str | None = None,
                  want_b: str | None = None) -> list[tuple[str, str]]:
    for want, have, side in ((want_a, variants_a, "A"), (want_b, variants_b, "B")):
        if want and want not in have:
            raise InvalidRequest(f"run {side} has no variant {want!r} (it has: "
                                 f"{', '.join(have) or 'none'})")
    if want_a or want_b:
        a = want_a or (want_b if want_b in variants_a else _only(variants_a, "A"))
        b = want_b or (want_a if want_a in variants_b else _only(variants_b, "B"))
        return [(a, b)]
    shared = [v for v in variants_a if v in variants_b]
    if shared:
        return [(v, v) for v in shared]
    if len(variants_a) == 1 and len(variants_b) == 1:
        return [(variants_a[0], variants_b[0])]
    raise InvalidRequest("the runs share no variant name; pick them as RUN_A:VARIANT "
                         "RUN_B:VARIANT")


def _only(variants: list[str], side: str) -> str:
    if len(variants) != 1:
        raise InvalidRequest(f"run {side} has several variants; name one as RUN:VARIANT")
    return variants[0]


def compare(results_a: list[dict], results_b: list[dict], pairs: list[tuple[str, str]],
            samples: dict | None = None, seed: int = SEED, resamples: int = RESAMPLES) -> list:
    """One entry per variant pair: grader statistics, then regressed and improved samples."""
    samples = samples or {}
    out = []
    for va, vb in pairs:
        cells_a = [r for r in results_a if r["variant"] == va]
        cells_b = [r for r in results_b if r["variant"] == vb]
        scores_a, scores_b = sample_scores(cells_a), sample_scores(cells_b)
        graders = [g for g in scores_a if g in scores_b]
        stats = {g: grader_stats(scores_a[g], scores_b[g], seed, resamples) for g in graders}
        regressed, improved = changed_samples(cells_a, cells_b, scores_a, scores_b, graders,
                                              samples)
        out.append({"variant_a": va, "variant_b": vb, "graders": stats,
                    "regressed": regressed, "improved": improved})
    return out


def sample_scores(cells: list[dict]) -> dict[str, dict[str, float]]:
    """grader -> sample id -> score, averaged over the sample's repeats."""
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        for grader, grade in (cell.get("grades") or {}).items():
            found[grader][cell["sample_id"]].append(float(grade["score"]))
    return {g: {s: sum(v) / len(v) for s, v in by.items()} for g, by in found.items()}


def grader_stats(a: dict[str, float], b: dict[str, float], seed: int = SEED,
                 resamples: int = RESAMPLES) -> dict:
    ids = sorted(set(a) & set(b))
    if not ids:
        return {"n": 0, "mean_a": None, "mean_b": None, "diff": None,
                "ci_a": None, "ci_b": None, "ci_diff": None}
    xa = np.array([a[i] for i in ids])
    xb = np.array([b[i] for i in ids])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(resamples, len(ids)))
    boot_a, boot_b = xa[picks].mean(axis=1), xb[picks].mean(axis=1)
    return {
        "n": len(ids),
        "mean_a": float(xa.mean()), "ci_a": _interval(boot_a),
        "mean_b": float(xb.mean()), "ci_b": _interval(boot_b),
        "diff": float(xb.mean() - xa.mean()), "ci_diff": _interval(boot_b - boot_a),
    }


def _interval(values) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def changed_samples(cells_a, cells_b, scores_a, scores_b, graders, samples):
    first_a = _first_cells(cells_a)
    first_b = _first_cells(cells_b)
    regressed, improved = [], []
    for sample_id in sorted(set(first_a) & set(first_b)):
        delta = {g: scores_b[g][sample_id] - scores_a[g][sample_id] for g in graders
                 if sample_id in scores_a[g] and sample_id in scores_b[g]}
        worse = any(d < -_EPS for d in delta.values())
        better = any(d > _EPS for d in delta.values())
        if not (worse or better):
            continue
        sample = samples.get(sample_id)
        entry = {
            "sample_id": sample_id,
            "input": message_text(sample.input) if sample else None,
            "ideal": sample.ideal if sample else None,
            "output_a": _answer(first_a[sample_id]), "output_b": _answer(first_b[sample_id]),
            "scores_a": {g: scores_a[g].get(sample_id) for g in delta},
            "scores_b": {g: scores_b[g].get(sample_id) for g in delta},
            "grades_a": first_a[sample_id].get("grades") or {},
            "grades_b": first_b[sample_id].get("grades") or {},
            "delta": delta,
        }
        (regressed if worse else improved).append(entry)
    regressed.sort(key=lambda e: sum(e["delta"].values()))
    improved.sort(key=lambda e: -sum(e["delta"].values()))
    return regressed, improved


def _first_cells(cells: list[dict]) -> dict[str, dict]:
    """The first repeat of each sample: the output shown side by side."""
    found: dict[str, dict] = {}
    for cell in sorted(cells, key=lambda c: c["repeat"]):
        found.setdefault(cell["sample_id"], cell)
    return found


def _answer(cell: dict) -> str:
    text = output_text(cell)
    return text if text is not None else f"ERROR: {(cell.get('error') or {}).get('message')}"
