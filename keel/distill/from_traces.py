"""Recorded answers that pass a training set's filters: `keel distill dataset --from-traces`.

    examples_from_traces(store, TraceFilters(model="bot", feedback="up", min_grade=0.8))

Filters read the trace (route, time, status, guard spans), its latest feedback, and the grades
eval runs gave it; `eval_run` + `best_per_sample` turn one graded teacher run, several answers
a prompt, into one best answer a prompt. What the filters mean: docs/distill-dataset.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from keel.distill.cut_off import (
    DEFAULT_CUT_OFF,
    apply_cut_off,
    check_cut_off,
    cut_off_meta,
    finish_reason,
)
from keel.distill.example import Example, assistant_message, clean_message
from keel.errors import InvalidRequest
from keel.messages import content_text
from keel.store.models import eval_results, traces

if TYPE_CHECKING:
    from keel.store import Store


@dataclass
class TraceFilters:
    """Which recorded answers become examples. `model` matches the route (the public model
    name) or the upstream model that answered; `since`/`until` are epoch seconds (from, up to
    but not including); `feedback` and `min_score` read each trace's latest feedback (as
    `keel eval dataset from-traces` does); `min_grade` keeps traces an eval run graded (the
    `eval_results` row holding the trace id) with a mean grade ≥ it, or the named `grader`'s;
    `eval_run` keeps only the traces that eval run's cells made (a teacher run over a prompt
    set, so best-of-n sampling and its grades become the training set), and `min_grade` then
    reads that run's grades; with it, `best_per_sample` keeps one answer per sample of the run:
    the best graded, a complete one before one `max_tokens` cut off, the shortest of equals;
    `cut_off` says what becomes of answers `max_tokens` cut off (`keel.distill.cut_off`: drop,
    trim or keep); `exclude_guarded` drops traces where a guard did anything but pass."""

    model: str | None = None
    since: float | None = None
    until: float | None = None
    feedback: str | None = None
    min_score: float | None = None
    min_grade: float | None = None
    grader: str | None = None
    eval_run: str | None = None
    best_per_sample: bool = False
    cut_off: str = DEFAULT_CUT_OFF
    exclude_guarded: bool = False
    limit: int = 100_000

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if v is not None and v is not False and k != "limit"}


def examples_from_traces(store: Store, filters: TraceFilters) -> list[Example]:
    """Successful recorded answers passing `filters`, oldest first."""
    from keel.ops.feedback import traces_for_dataset

    if filters.feedback not in (None, "up", "down", "any"):
        raise InvalidRequest(f"feedback: expected up, down or any, got {filters.feedback!r}",
                             param="feedback")
    found = traces_for_dataset(store, feedback=filters.feedback, since=filters.since,
                               min_score=filters.min_score, limit=filters.limit)
    if filters.best_per_sample and filters.eval_run is None:
        raise InvalidRequest("best_per_sample needs eval_run: the samples are that run's",
                             param="best_per_sample")
    check_cut_off(filters.cut_off)
    made: dict[str, str] = {}
    run_id = None
    if filters.eval_run is not None:
        from keel.evals.runs import get_run

        # resolved once: a prefix, and refused when it names no run (not an empty set)
        run_id = get_run(store, filters.eval_run)["id"]
        made = _run_traces(store, run_id)
        found = [t for t in found if t["id"] in made]
    details = _trace_details(store, [t["id"] for t in found])
    graded = filters.min_grade is not None or filters.best_per_sample
    grades = _grades(store, list(details), filters.grader, run_id) if graded else {}
    examples = []
    for entry in reversed(found):  # oldest first: the first of duplicates is the oldest
        detail = details.get(entry["id"])
        if detail is None or not _passes(entry, detail, grades, filters):
            continue
        example = _example_from_trace(entry, filters.cut_off)
        if example is not None:
            if entry["id"] in grades:
                example.meta["grade"] = round(grades[entry["id"]], 4)
            examples.append(example)
    if filters.best_per_sample:
        examples = _best_per_sample(examples, made)
    return examples


def _best_per_sample(examples: list[Example], samples: dict[str, str]) -> list[Example]:
    """One example per eval sample: the highest grade, then a complete answer before a trimmed
    one, then the shortest answer (of two right answers the shorter one is less likely padded),
    then the oldest; in the order the kept ones were made."""
    best: dict[str, tuple[int, Example]] = {}
    for index, example in enumerate(examples):
        sample = samples[example.origin]
        held = best.get(sample)
        if held is None or _rank(example) > _rank(held[1]):
            best[sample] = (index, example)
    return [example for _, example in sorted(best.values(), key=lambda pair: pair[0])]


def _rank(example: Example) -> tuple[float, bool, int]:
    answer = example.answer
    size = len(content_text(answer.get("content")) or "") + len(
        orjson.dumps(answer.get("tool_calls") or []))
    return (example.meta.get("grade", -1.0), not example.meta.get("cut_off"), -size)


def _trace_details(store: Store, ids: list[str]) -> dict[str, dict]:
    # The columns traces_for_dataset leaves out: who answered, how it ended, what guards did.
    out: dict[str, dict] = {}
    columns = (traces.c.id, traces.c.upstream_model, traces.c.status, traces.c.spans)
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = sa.select(*columns).where(traces.c.id.in_(ids[start:start + 500]))
            for row in conn.execute(query).mappings():
                out[row["id"]] = dict(row)
    return out


def _run_traces(store: Store, run_id: str) -> dict[str, str]:
    """trace id -> sample id, of the traces eval run `run_id` made."""
    query = sa.select(eval_results.c.trace_id, eval_results.c.sample_id).where(
        eval_results.c.run_id == run_id, eval_results.c.trace_id.is_not(None))
    with store.engine.connect() as conn:
        return {trace_id: sample_id for trace_id, sample_id in conn.execute(query)}


def _grades(store: Store, ids: list[str], grader: str | None,
            run_id: str | None = None) -> dict[str, float]:
    """trace id -> its eval grade (the named grader's score, or the mean of all), the latest
    run's when several graded it (only run `run_id`'s when given)."""
    out: dict[str, float] = {}
    query_base = sa.select(eval_results.c.trace_id, eval_results.c.grades).order_by(
        eval_results.c.created_at, eval_results.c.id)
    if run_id is not None:
        query_base = query_base.where(eval_results.c.run_id == run_id)
    with store.engine.connect() as conn:
        for start in range(0, len(ids), 500):
            query = query_base.where(eval_results.c.trace_id.in_(ids[start:start + 500]))
            for row in conn.execute(query).mappings():
                score = _grade_score(row["grades"] or {}, grader)
                if score is not None:
                    out[row["trace_id"]] = score
    return out


def _grade_score(grades: dict, grader: str | None) -> float | None:
    scores = {name: g.get("score") for name, g in grades.items() if isinstance(g, dict)}
    scores = {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}
    if grader is not None:
        return scores.get(grader)
    return sum(scores.values()) / len(scores) if scores else None


def _passes(entry: dict, detail: dict, grades: dict, filters: TraceFilters) -> bool:
    if detail["status"] != 200:
        return False
    if filters.model is not None and filters.model not in (entry["model"],
                                                           detail["upstream_model"]):
        return False
    if filters.until is not None and entry["created_at"] >= filters.until:
        return False
    if filters.min_grade is not None and grades.get(entry["id"], -1.0) < filters.min_grade:
        return False
    return not (filters.exclude_guarded and guard_actions(detail["spans"]))


def guard_actions(spans: list[dict] | None) -> list[str]:
    """`guard.<name>=<action>` for each guard span whose verdict was not `pass` (the guardrails
    layer records one `guard.<name>` span per verdict, its action in `attrs.action`)."""
    acted = []
    for span in spans or ():
        name, attrs = span.get("name") or "", span.get("attrs") or {}
        if name.startswith("guard.") and attrs.get("action") not in (None, "pass"):
            acted.append(f"{name}={attrs['action']}")
    return acted


def _example_from_trace(entry: dict, cut_off: str) -> Example | None:
    request, response = entry["request"], entry.get("response")
    answer, reason = assistant_message(response), finish_reason(response)
    if answer is not None:
        answer = apply_cut_off(answer, reason, cut_off)
    if answer is None:
        return None
    meta = {"trace_id": entry["id"], "model": entry.get("model"), **cut_off_meta(reason, cut_off)}
    latest = entry.get("feedback") or {}
    if latest.get("score") is not None:
        meta["feedback_score"] = latest["score"]
    return Example(prompt=[clean_message(m) for m in request["messages"]], answer=answer,
                   tools=request.get("tools") or None, origin=entry["id"],
                   meta={k: v for k, v in meta.items() if v is not None})

