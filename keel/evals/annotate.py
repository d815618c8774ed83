"""Human annotation: what is left for a person to grade, reading their answer, and saving it.

    dataset_queue(store, name, version, annotator)  samples this annotator has not annotated
    run_queue(store, run_id, annotator)              a run's outputs (with the graders' verdicts)
    parse_grade(text)                                "pass", "f", "4", "superset" -> Answer
    save_annotation(store, item, answer, annotator)  one row in eval_annotations, at once
    run_annotations(store, run_id)                   what people said about a run's outputs
    trace_queue(store, annotator, feedback)          traces with feedback, their answers to grade
    trace_annotations(store, trace_id)               what people said about a trace's answer
    latest_answers(store, annotator, ...)            this annotator's latest answer per item
    version_with_ideals(store, name, version, ...)   a new dataset version with people's ideals

The terminal loop is `keel eval annotate` (keel/cli/eval_human.py) and the browser's is the
console's /console/annotate (keel/console/views/annotate.py): both save the same rows, each
answer as it is given, so quitting midway loses nothing and the next session starts where this
one stopped. A trace's annotation has neither run nor dataset: its sample_id is the trace id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest, NotFound
from keel.evals.base import Sample
from keel.evals.dataset_store import get_dataset, import_dataset
from keel.evals.runs import os_user
from keel.store.models import eval_annotations, eval_datasets, eval_results, eval_runs

if TYPE_CHECKING:
    from keel.store import Store

PASS_WORDS = {"pass": "pass", "p": "pass", "fail": "fail", "f": "fail"}


class RunNotFound(NotFound):
    code = "run_not_found"


@dataclass
class Item:
    """One thing to annotate: a dataset sample, or one output of a run (variant × sample ×
    repeat). `sample` is None when the run's dataset version is not in this store."""

    sample_id: str
    sample: Sample | None
    dataset_id: int | None = None
    run_id: str | None = None
    variant: str | None = None
    repeat: int | None = None
    output: Any = None
    grades: dict[str, dict] = field(default_factory=dict)

    @property
    def output_text(self) -> str | None:
        return output_text(self.output)


@dataclass
class Answer:
    """What a person said: a grade (label, and score when it is pass/fail or 1-5), an ideal
    answer they wrote, a comment; any of them may be missing."""

    label: str | None = None
    score: float | None = None
    ideal: str | None = None
    comment: str | None = None


def default_annotator() -> str:
    return os_user()


def parse_grade(text: str) -> Answer:
    """pass/fail (or p/f) scores 1 or 0; 1-5 scores that number; any other word is a label."""
    word = text.strip()
    if not word:
        raise InvalidRequest("grade: expected pass/fail, 1-5 or a label", param="grade")
    if word.lower() in PASS_WORDS:
        label = PASS_WORDS[word.lower()]
        return Answer(label=label, score=1.0 if label == "pass" else 0.0)
    if word in ("1", "2", "3", "4", "5"):
        return Answer(label=word, score=float(word))
    if len(word) > 200:
        raise InvalidRequest("grade: a label has at most 200 characters", param="grade")
    return Answer(label=word)


# -- what is left to annotate ----------------------------------------------------------------


def dataset_queue(
    store: Store, name: str, version: str | None, annotator: str, *, include_done: bool = False
) -> tuple[dict, list[Item]]:
    """The samples left for `annotator` (all of them with `include_done`)."""
    meta, samples = get_dataset(store, name, version)
    # Any version of the dataset counts: writing an ideal answer makes a new version, and the
    # next session on it must still start where this one stopped.
    versions = sa.select(eval_datasets.c.id).where(eval_datasets.c.name == meta["name"])
    done = _annotated(store, eval_annotations.c.dataset_id.in_(versions), annotator)
    items = [Item(sample_id=s.id, sample=s, dataset_id=meta["id"]) for s in samples
             if include_done or (None, s.id, None) not in done]
    return meta, items


def run_queue(
    store: Store, run_id: str, annotator: str, variant: str | None = None, *,
    include_done: bool = False,
) -> tuple[dict, list[Item]]:
    """The run's outputs left for `annotator` (all of them with `include_done`)."""
    run = get_run(store, run_id)
    samples = _run_samples(store, run)
    query = (sa.select(eval_results).where(eval_results.c.run_id == run["id"])
             .order_by(eval_results.c.id))
    if variant is not None:
        query = query.where(eval_results.c.variant == variant)
    with store.engine.connect() as conn:
        results = conn.execute(query).mappings().all()
    done = _annotated(store, eval_annotations.c.run_id == run["id"], annotator)
    order = {sample_id: n for n, sample_id in enumerate(samples)}
    items = [
        Item(sample_id=r["sample_id"], sample=samples.get(r["sample_id"]), run_id=run["id"],
             variant=r["variant"], repeat=r["repeat"], output=r["output"] or r["error"],
             grades=r["grades"] or {})
        for r in results
        if include_done or (r["variant"], r["sample_id"], r["repeat"]) not in done
    ]
    # Dataset order, then variant: a person sees every variant's answer to one sample together.
    items.sort(key=lambda i: (order.get(i.sample_id, len(order)), i.variant, i.repeat))
    return run, items


def get_run(store: Store, run_id: str) -> dict[str, Any]:
    """A run's row; `run_id` may be any unique prefix."""
    run_id = run_id.strip()
    columns = [eval_runs.c[n] for n in ("id", "created_at", "suite", "status", "dataset_name",
                                         "dataset_version")]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(*columns).where(eval_runs.c.id == run_id)).mappings().all()
        if not rows and run_id.isalnum():
            rows = conn.execute(sa.select(*columns).where(
                eval_runs.c.id.like(f"{run_id}%")).limit(2)).mappings().all()
    if not rows:
        raise RunNotFound(f"no eval run {run_id!r}")
    if len(rows) > 1:
        raise InvalidRequest(f"run id prefix {run_id!r} is ambiguous; give more characters")
    return {str(k): v for k, v in rows[0].items()}


def _run_samples(store: Store, run: dict) -> dict[str, Sample]:
    try:
        _, samples = get_dataset(store, run["dataset_name"], run["dataset_version"])
    except NotFound:
        return {}
    return {s.id: s for s in samples}


def _annotated(store: Store, where, annotator: str) -> set[tuple]:
    query = sa.select(eval_annotations.c.variant, eval_annotations.c.sample_id,
                      eval_annotations.c.repeat).where(
        where, eval_annotations.c.annotator == annotator)
    with store.engine.connect() as conn:
        return {tuple(row) for row in conn.execute(query).all()}


def trace_queue(
    store: Store, annotator: str, feedback: str = "any", *, limit: int = 200,
    include_done: bool = False,
) -> list[Item]:
    """Traces with feedback (`feedback`: any, down or up, by each trace's latest), newest
    first, as items whose output is the answer the gateway gave; a user's correction is the
    sample's ideal. Only traces with recorded chat messages qualify."""
    from keel.evals.datasets import sample_from_trace
    from keel.ops.feedback import traces_for_dataset

    if feedback not in ("any", "down", "up"):
        raise InvalidRequest(f"feedback: expected any, down or up, got {feedback!r}",
                             param="feedback")
    found = traces_for_dataset(store, feedback=feedback, limit=limit)
    done = set() if include_done else _annotated(store, _trace_rows(), annotator)
    items = []
    for trace in found:
        if (None, trace["id"], None) in done:
            continue
        sample = sample_from_trace(trace)
        items.append(Item(sample_id=trace["id"], sample=sample,
                          output=sample.metadata.get("output"),
                          grades=_feedback_grade(trace.get("feedback"))))
    return items


def _trace_rows():
    return sa.and_(eval_annotations.c.run_id.is_(None), eval_annotations.c.dataset_id.is_(None))


def _feedback_grade(feedback: dict | None) -> dict[str, dict]:
    """The user's feedback shown as a verdict beside the output, as a run shows its graders'."""
    if not feedback:
        return {}
    from keel.ops.feedback import sentiment

    mood = sentiment(feedback["score"], feedback.get("scale"))
    return {"user feedback": {"score": feedback["score"], "label": mood,
                              "passed": None if mood == "neutral" else mood == "up",
                              "reasoning": feedback.get("comment") or ""}}


def latest_answers(
    store: Store, annotator: str, *, run_id: str | None = None, dataset_name: str | None = None,
    traces: bool = False,
) -> dict[tuple, dict[str, Any]]:
    """(variant, sample_id, repeat) -> this annotator's latest annotation of that item, in a
    run, in any version of a dataset, or on traces (give one)."""
    if run_id is not None:
        where = eval_annotations.c.run_id == run_id
    elif dataset_name is not None:
        versions = sa.select(eval_datasets.c.id).where(eval_datasets.c.name == dataset_name)
        where = eval_annotations.c.dataset_id.in_(versions)
    elif traces:
        where = _trace_rows()
    else:
        raise InvalidRequest("latest_answers: give a run, a dataset or traces")
    query = (sa.select(eval_annotations).where(where, eval_annotations.c.annotator == annotator)
             .order_by(eval_annotations.c.created_at, eval_annotations.c.id))
    latest: dict[tuple, dict[str, Any]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query).mappings().all():
            latest[(row["variant"], row["sample_id"], row["repeat"])] = {
                str(k): v for k, v in row.items()}
    return latest


# -- saving and reading answers --------------------------------------------------------------


def save_annotation(store: Store, item: Item, answer: Answer, annotator: str) -> int:
    row = {
        "run_id": item.run_id,
        "dataset_id": item.dataset_id,
        "variant": item.variant,
        "sample_id": item.sample_id,
        "repeat": item.repeat,
        "label": answer.label,
        "score": answer.score,
        "ideal": answer.ideal,
        "comment": answer.comment or None,
        "annotator": annotator,
        "created_at": time.time(),
    }
    with store.engine.begin() as conn:
        return conn.execute(eval_annotations.insert().values(**row)).inserted_primary_key[0]


def run_annotations(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The annotations of a run's outputs, oldest first."""
    query = (sa.select(eval_annotations).where(eval_annotations.c.run_id == run_id)
             .order_by(eval_annotations.c.created_at, eval_annotations.c.id))
    with store.engine.connect() as conn:
        return [{str(k): v for k, v in row.items()}
                for row in conn.execute(query).mappings().all()]


def trace_annotations(store: Store, trace_id: str) -> list[dict[str, Any]]:
    """The annotations of a trace's answer (made from the traces queue), oldest first."""
    query = (sa.select(eval_annotations)
             .where(_trace_rows(), eval_annotations.c.sample_id == trace_id)
             .order_by(eval_annotations.c.created_at, eval_annotations.c.id))
    with store.engine.connect() as conn:
        return [{str(k): v for k, v in row.items()}
                for row in conn.execute(query).mappings().all()]


def output_text(output: Any) -> str | None:
    """The answer text of a stored output, whatever shape the runner gave it."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, dict):
        for key in ("text", "content", "message"):
            if isinstance(output.get(key), str):
                return output[key]
    return None


def version_with_ideals(
    store: Store, name: str, version: str, *, dataset_id: int | None = None,
    run_id: str | None = None,
) -> tuple[str, bool, int] | None:
    """Store a version of dataset `name`@`version` whose samples carry the ideal answers people
    wrote while annotating it (`dataset_id`) or a run on it (`run_id`); the latest ideal for a
    sample replaces the one it had. Returns (version, created, samples changed), or None when
    nobody wrote an ideal. Versions are immutable, so the annotated one is never edited."""
    where = (eval_annotations.c.dataset_id == dataset_id if dataset_id is not None
             else eval_annotations.c.run_id == run_id)
    query = (sa.select(eval_annotations.c.sample_id, eval_annotations.c.ideal)
             .where(where, eval_annotations.c.ideal.is_not(None))
             .order_by(eval_annotations.c.created_at, eval_annotations.c.id))
    with store.engine.connect() as conn:
        ideals = {sample_id: ideal for sample_id, ideal in conn.execute(query).all()}
    if not ideals:
        return None
    _, samples = get_dataset(store, name, version)
    changed = [s.id for s in samples if s.id in ideals and s.ideal != ideals[s.id]]
    updated = [replace(s, ideal=ideals[s.id]) if s.id in ideals else s for s in samples]
    _, new_version, created = import_dataset(
        store, name, updated, source=f"{name} {version} with ideal answers written in annotation")
    return new_version, created, len(changed)
