"""Judge calibration: how well each grader of a run agrees with the people who graded it too.

Each human annotation of a run's output is paired with every grader's verdict on that output:

- pass/fail: a human "pass"/"fail" (or a 1-5 rating, passing at `pass_at` and above) against
  the grader's `Grade.passed`;
- label: any other human label (e.g. a fact category) against the grader's `Grade.label`,
  compared without regard to case.

For each grader and kind the result is the accuracy (share of pairs that agree), Cohen's kappa
(agreement beyond what chance would give: 1 perfect, 0 no better than chance, below 0 worse)
and the confusion table, human label by grader label. The arithmetic is pure functions of
`(human, grader)` pairs; only `calibrate_run` reads the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.store.models import eval_results

if TYPE_CHECKING:
    from keel.store import Store

Pair = tuple[Hashable, Hashable]  # (human, grader)

# Landis & Koch (1977), the usual words for kappa ranges.
READINGS = [(0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"),
            (1.0, "almost perfect")]


def accuracy(pairs: Iterable[Pair]) -> float | None:
    pairs = list(pairs)
    if not pairs:
        return None
    return sum(1 for human, model in pairs if human == model) / len(pairs)


def cohens_kappa(pairs: Iterable[Pair]) -> float | None:
    """Cohen's kappa of two raters: (p_o - p_e) / (1 - p_e).

    p_o is the observed agreement; p_e the agreement expected by chance, the sum over each
    category of the two raters' shares of it. None when undefined: no pairs, or both raters
    always gave one and the same category (p_e = 1).
    """
    pairs = list(pairs)
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(1 for human, model in pairs if human == model) / n
    humans = Counter(human for human, _ in pairs)
    models = Counter(model for _, model in pairs)
    expected = sum(humans[c] * models[c] for c in humans) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1 - expected)


def confusion(pairs: Iterable[Pair]) -> dict[str, dict[str, int]]:
    """Counts by human label (rows), then grader label (columns)."""
    table: dict[str, dict[str, int]] = {}
    for human, model in pairs:
        row = table.setdefault(str(human), {})
        row[str(model)] = row.get(str(model), 0) + 1
    return table


def reading(kappa: float | None) -> str:
    """Landis & Koch's word for a kappa value."""
    if kappa is None:
        return "undefined"
    if kappa < 0:
        return "poor (worse than chance)"
    for upper, word in READINGS:
        if kappa <= upper:
            return word
    return READINGS[-1][1]


@dataclass
class Agreement:
    grader: str
    kind: str  # "pass/fail" or "label"
    n: int
    accuracy: float | None
    kappa: float | None
    reading: str
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(grader: str, kind: str, pairs: list[Pair]) -> Agreement:
    kappa = cohens_kappa(pairs)
    return Agreement(grader=grader, kind=kind, n=len(pairs), accuracy=accuracy(pairs),
                     kappa=kappa, reading=reading(kappa), confusion=confusion(pairs))


# -- from a run's results and annotations ----------------------------------------------------


def human_verdict(label: str | None, pass_at: int = 4) -> bool | None:
    """A human label read as pass/fail: pass/fail words, or a 1-5 rating; None otherwise."""
    word = (label or "").strip().lower()
    if word in ("pass", "fail"):
        return word == "pass"
    if word in ("1", "2", "3", "4", "5"):
        return int(word) >= pass_at
    return None


def calibration(
    results: list[dict], annotations: list[dict], grader: str | None = None, pass_at: int = 4
) -> list[Agreement]:
    """Agreements from result rows (variant, sample_id, repeat, grades) and annotation rows
    (variant, sample_id, repeat, label, annotator). Each annotator's latest word on an output
    counts once; annotations come oldest first."""
    cells = {(r["variant"], r["sample_id"], r["repeat"]): r.get("grades") or {} for r in results}
    latest = {}
    for note in annotations:
        if note.get("label") is None:
            continue  # an ideal answer or a comment alone is not a grade
        cell = (note["variant"], note["sample_id"], note["repeat"] or 0)
        latest[(cell, note.get("annotator"))] = note["label"]
    pairs: dict[tuple[str, str], list[Pair]] = {}
    for (cell, _annotator), label in latest.items():
        for name, grade in cells.get(cell, {}).items():
            if grader is not None and name != grader:
                continue
            kind, pair = _pair(label, grade or {}, pass_at)
            if pair is not None:
                pairs.setdefault((name, kind), []).append(pair)
    return [agreement(name, kind, found) for (name, kind), found in sorted(pairs.items())]


def _pair(label: str, grade: dict, pass_at: int) -> tuple[str, Pair | None]:
    verdict = human_verdict(label, pass_at)
    if verdict is not None:
        passed = grade.get("passed")
        if passed is None:
            return "pass/fail", None
        return "pass/fail", (_word(verdict), _word(bool(passed)))
    model_label = grade.get("label")
    if model_label is None:
        return "label", None
    return "label", (label.strip().lower(), str(model_label).strip().lower())


def _word(passed: bool) -> str:
    return "pass" if passed else "fail"


def calibrate_run(
    store: Store, run_id: str, grader: str | None = None, pass_at: int = 4
) -> tuple[dict, list[Agreement]]:
    """The run (id may be a prefix) and each grader's agreement with its human annotations."""
    from keel.evals.annotate import get_run, run_annotations

    run = get_run(store, run_id)
    query = sa.select(eval_results.c.variant, eval_results.c.sample_id, eval_results.c.repeat,
                      eval_results.c.grades).where(eval_results.c.run_id == run["id"])
    with store.engine.connect() as conn:
        results = [dict(row) for row in conn.execute(query).mappings().all()]
    return run, calibration(results, run_annotations(store, run["id"]), grader, pass_at)


# -- two judges, side by side ----------------------------------------------------------------
# A cheap judge (e.g. one distilled from a strong judge's grades, docs/distill.md) is checked
# against people and against the strong judge at once: each grader's agreement with the human
# grades, and the cheap grader's agreement with the strong one over every output both graded
# (the strong judge's verdict in the human's place).

PROBLEM_LABELS = ("__error__", "__invalid__")


def judge_pairs(results: list[dict], strong: str, cheap: str) -> dict[str, list[Pair]]:
    """kind -> (strong's verdict, cheap's verdict) over the outputs both graded, by label and
    by pass/fail; grades that could not be made (error labels) are left out."""
    pairs: dict[str, list[Pair]] = {"label": [], "pass/fail": []}
    for row in results:
        grades = row.get("grades") or {}
        a, b = grades.get(strong), grades.get(cheap)
        if not a or not b or a.get("label") in PROBLEM_LABELS or b.get("label") in PROBLEM_LABELS:
            continue
        if a.get("label") is not None and b.get("label") is not None:
            pairs["label"].append((str(a["label"]).strip().lower(),
                                   str(b["label"]).strip().lower()))
        if a.get("passed") is not None and b.get("passed") is not None:
            pairs["pass/fail"].append((_word(bool(a["passed"])), _word(bool(b["passed"]))))
    return {kind: found for kind, found in pairs.items() if found}


def compare_judges(results: list[dict], annotations: list[dict], strong: str, cheap: str,
                   pass_at: int = 4) -> dict[str, Any]:
    """{"people": {grader: [Agreement]}, "between": [Agreement of cheap with strong]}."""
    known = {g for row in results for g in (row.get("grades") or {})}
    for name in (strong, cheap):
        if name not in known:
            from keel.errors import InvalidRequest

            raise InvalidRequest(f"the run has no grader {name!r} (it has: "
                                 f"{', '.join(sorted(known)) or 'none'})")
    people = {name: calibration(results, annotations, name, pass_at) for name in (strong, cheap)}
    between = [agreement(f"{cheap} vs {strong}", kind, found)
               for kind, found in judge_pairs(results, strong, cheap).items()]
    return {"strong": strong, "cheap": cheap, "people": people, "between": between}


def calibrate_judges(store: Store, run_id: str, strong: str, cheap: str, pass_at: int = 4
                     ) -> tuple[dict, dict[str, Any]]:
    """The run and compare_judges over its results and human annotations."""
    from keel.evals.annotate import get_run, run_annotations

    run = get_run(store, run_id)
    query = sa.select(eval_results.c.variant, eval_results.c.sample_id, eval_results.c.repeat,
                      eval_results.c.grades).where(eval_results.c.run_id == run["id"])
    with store.engine.connect() as conn:
        results = [dict(row) for row in conn.execute(query).mappings().all()]
    return run, compare_judges(results, run_annotations(store, run["id"]), strong, cheap,
                               pass_at)
