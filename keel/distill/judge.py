"""A distilled judge: a cheap model trained on a strong judge's grades and people's.

    examples = judge_examples(store, ["RUN"], "fact")    # judge prompts -> verdict text
    set_id = build_judge_set(store, "fact-judge", examples)
    # keel distill train fact-judge ...                  (the same training pipeline)
    await regrade(store, config, "RUN", "fact", judge_model="fact-judge", as_name="fact-cheap")
    # keel eval calibrate RUN --judges fact fact-cheap   (agreement with people and the strong)

Training data. For every output of the runs that a model-graded grader graded, the judge's
prompt is rebuilt exactly as the grader sent it (the grader is made again from the run's audit
and given a recording judge that answers with the stored verdict), and the target is the strong
judge's verdict text (`Grade.reasoning`: its whole answer, reasoning and choice). People's
grades (`keel eval annotate`) correct it: a human label that is one of the grader's choices
(e.g. a fact letter) becomes the target; a human pass/fail that contradicts the judge drops the
example (the right verdict text is unknown); one that agrees keeps it. Grades that failed
(`__error__`, `__invalid__`) are left out.

The set is stored like any training set: eval datasets NAME-train / NAME-validation / NAME-test
(input: the judge prompt, ideal: the verdict) and a lineage set whose source names the runs,
the grader and the strong judge, so `keel distill train` and `keel distill evaluate` take it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from keel.errors import InvalidRequest
from keel.evals.base import Output, Sample

PROBLEM_LABELS = ("__error__", "__invalid__")
SPLITS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))


@dataclass
class Example:
    id: str
    messages: list[dict]  # the judge prompt
    verdict: str  # what the judge should answer
    label: str | None
    source: str  # "judge", "judge+human" (a person agreed) or "human" (a person's label)
    run_id: str = ""

    def chat(self) -> dict:
        """One OpenAI chat fine-tuning line."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.verdict}]}


@dataclass
class Stats:
    graded: int = 0
    kept: int = 0
    human_labels: int = 0
    human_agreed: int = 0
    dropped_disagreed: int = 0
    dropped_problem: int = 0
    dropped_no_sample: int = 0
    judge_models: set = field(default_factory=set)

    def to_dict(self) -> dict:
        return {k: sorted(v) if isinstance(v, set) else v for k, v in vars(self).items()}


class RecordingJudge:
    """Answers with a fixed verdict and keeps the request: the grader's exact prompt."""

    def __init__(self) -> None:
        self.verdict = ""
        self.requests: list[dict] = []

    async def complete(self, body: dict) -> dict:
        self.requests.append(body)
        return {"choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": self.verdict}}]}

    async def embed(self, texts, embedder: str = "minilm"):
        raise InvalidRequest("an embedding grader has no judge prompt to distil")


def grader_from_audit(run: dict, grader: str, judge, model: str | None = None):
    """The grader `grader` of a run, made again from its audit (`config.graders`)."""
    from keel.evals.graders import make_grader

    described = ((run.get("config") or {}).get("graders") or {}).get(grader)
    if not described or "kind" not in described:
        known = ", ".join((run.get("config") or {}).get("graders") or {}) or "none"
        raise InvalidRequest(f"run {run['id']} has no grader {grader!r} in its audit "
                             f"(graders: {known})")
    options = dict(described.get("options") or {})
    if model is not None:
        if "model" not in options:
            raise InvalidRequest(f"grader {grader!r} ({described['kind']}) is not model-graded")
        options["model"] = model
    return make_grader(described["kind"], grader, options, judge)


async def judge_examples(store, run_ids: list[str], grader: str, *, humans: bool = True,
                         pass_at: int = 4) -> tuple[list[Example], Stats]:
    from keel.evals.annotate import run_annotations
    from keel.evals.calibrate import human_verdict
    from keel.evals.runs import get_run, results, run_samples

    examples: list[Example] = []
    stats = Stats()
    for run_id in run_ids:
        run = get_run(store, run_id)
        recorder = RecordingJudge()
        made = grader_from_audit(run, grader, recorder)
        if "model" not in type(made).Options.model_fields:
            raise InvalidRequest(f"grader {grader!r} is not model-graded: there is no judge "
                                 "to distil")
        stats.judge_models.add(made.options.model)
        choices = [str(c) for c in getattr(getattr(made, "spec", None), "choice_strings", ())]
        samples = run_samples(store, run)
        people = _latest_labels(run_annotations(store, run["id"])) if humans else {}
        for cell in results(store, run["id"]):
            grade = (cell.get("grades") or {}).get(grader)
            if not grade or cell.get("error") is not None:
                continue
            stats.graded += 1
            if grade.get("label") in PROBLEM_LABELS:
                stats.dropped_problem += 1
                continue
            sample = samples.get(cell["sample_id"])
            if sample is None:
                stats.dropped_no_sample += 1
                continue
            verdict, label, source = grade.get("reasoning") or grade.get("label") or "", \
                grade.get("label"), "judge"
            human = people.get((cell["variant"], cell["sample_id"], cell["repeat"] or 0))
            if human is not None:
                choice = next((c for c in choices if c.lower() == human.strip().lower()), None)
                passed = human_verdict(human, pass_at)
                if choice is not None:
                    verdict, label, source = choice, choice, "human"
                    stats.human_labels += 1
                elif passed is not None and grade.get("passed") is not None:
                    if passed != bool(grade["passed"]):
                        stats.dropped_disagreed += 1
                        continue
                    source = "judge+human"
                    stats.human_agreed += 1
            recorder.verdict, recorder.requests = verdict, []
            await made.grade(sample, _output(cell))
            if not recorder.requests:
                stats.dropped_problem += 1
                continue
            cell_id = f"{run['id']}:{cell['variant']}:{cell['sample_id']}:{cell['repeat'] or 0}"
            examples.append(Example(id=cell_id, messages=recorder.requests[-1]["messages"],
                                    verdict=verdict, label=label, source=source,
                                    run_id=run["id"]))
            stats.kept += 1
    return examples, stats


def _latest_labels(annotations: list[dict]) -> dict[tuple, str]:
    """The latest human label per output (annotations come oldest first)."""
    latest: dict[tuple, str] = {}
    for note in annotations:
        if note.get("label") is not None:
            latest[(note["variant"], note["sample_id"], note["repeat"] or 0)] = note["label"]
    return latest


def _output(cell: dict) -> Output:
    from keel.evals.annotate import output_text

    output = cell.get("output")
    return Output(text=output_text(output) or "",
                  response=output.get("response") if isinstance(output, dict) else None)


def split_of(example_id: str, splits=SPLITS) -> str:
    """A stable split by a hash of the id (the same example always lands in the same one)."""
    point = int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, share in splits:
        edge += share
        if point < edge:
            return name
    return splits[-1][0]


def build_judge_set(store, name: str, examples: list[Example], *, run_ids: list[str],
                    grader: str, stats: Stats | None = None) -> tuple[str, dict]:
    """Eval datasets NAME-train / -validation / -test and the lineage set. Returns (set id,
    splits)."""
    from keel.distill import lineage
    from keel.evals.dataset_store import import_dataset

    if not examples:
        raise InvalidRequest("no judge examples: the runs have no usable grades of that grader")
    by_split: dict[str, list[Sample]] = {s: [] for s, _ in SPLITS}
    for ex in examples:
        by_split[split_of(ex.id)].append(Sample(
            id=ex.id, input=ex.messages, ideal=ex.verdict,
            metadata={"label": ex.label, "source": ex.source, "run_id": ex.run_id,
                      "grader": grader}))
    splits = {}
    for split, samples in by_split.items():
        if not samples:
            continue
        dataset, version, _ = import_dataset(store, f"{name}-{split}", samples,
                                             f"keel distill judge dataset {' '.join(run_ids)}")
        splits[split] = {"dataset": dataset, "version": version, "count": len(samples)}
    teachers = sorted(stats.judge_models if stats else set())
    set_id = lineage.create_set(
        store, name=name, splits=splits,
        source={"kind": "judge", "runs": run_ids, "grader": grader,
                "teacher": teachers[0] if len(teachers) == 1 else None,
                "judge_models": teachers, "created_at": time.time()},
        stats=stats.to_dict() if stats else None)
    return set_id, splits


async def regrade(store, config, run_id: str, grader: str, *, judge_model: str, as_name: str
                  ) -> dict[str, Any]:
    """Grade every output of a run again with `grader` asking `judge_model` (e.g. the distilled
    judge), as a new grader column `as_name` of the same cells, so the human annotations of the
    run apply to both; the run's audit records the added grader."""
    import asyncio

    from keel.evals.gateway_judge import GatewayJudge
    from keel.evals.runs import get_run, results, run_samples
    from keel.gateway import Gateway
    from keel.store.models import eval_results, eval_runs

    run = get_run(store, run_id)
    if as_name == grader:
        raise InvalidRequest("--as: give the cheap judge's grades a name of their own")
    if judge_model not in config.models:
        raise InvalidRequest(f"no model {judge_model!r} in the gateway config")
    gateway = Gateway(config)
    await gateway.start()
    try:
        made = grader_from_audit(run, grader, GatewayJudge(gateway), model=judge_model)
        samples = run_samples(store, run)
        cells = [c for c in results(store, run["id"])
                 if c.get("error") is None and c["sample_id"] in samples]
        semaphore = asyncio.Semaphore(8)

        async def one(cell):
            async with semaphore:
                try:
                    grade = await made.grade(samples[cell["sample_id"]], _output(cell))
                    return cell, grade.to_dict()
                except Exception as exc:  # noqa: BLE001 - one bad grade, not the run
                    return cell, {"score": 0.0, "passed": False, "label": "__error__",
                                  "reasoning": None, "details": {"error": str(exc)}}

        graded = await asyncio.gather(*(one(c) for c in cells))
    finally:
        await gateway.close()
    config_audit = dict(run.get("config") or {})
    config_audit["graders"] = {**(config_audit.get("graders") or {}),
                               as_name: {**made.describe(), "added_by": "keel distill judge "
                                         f"grade (as {grader} with {judge_model})"}}
    with store.engine.begin() as conn:
        for cell, grade in graded:
            conn.execute(eval_results.update().where(eval_results.c.id == cell["id"])
                         .values(grades={**(cell.get("grades") or {}), as_name: grade}))
        conn.execute(eval_runs.update().where(eval_runs.c.id == run["id"])
                     .values(config=config_audit))
    labels: dict[str, int] = {}
    for _, grade in graded:
        labels[str(grade.get("label"))] = labels.get(str(grade.get("label")), 0) + 1
    return {"run_id": run["id"], "grader": as_name, "judge_model": judge_model,
            "graded": len(graded), "labels": labels}
