"""The runner: every (variant, sample, repeat) cell through an in-process gateway, graded, stored.

    run = await run_suite(suite, config, store)            # a new run
    run = await run_suite(suite, config, store, resume=id)  # fill in what an earlier run missed

Cells run concurrently, never more than `suite.concurrency` at once (a semaphore around the
call and its grading). A transient error (a `KeelError` with `retryable`, e.g. 429/502/504) is
retried with exponential backoff; what still fails is recorded as the cell's error and grades as
0. Results are written in small batches as they finish, so an interrupted run keeps them;
resuming re-runs only the cells that are missing or ended in an error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

from keel import __version__
from keel.errors import ConfigError, KeelError, UpstreamRateLimited
from keel.evals import runs
from keel.evals.base import Grade, Output, Sample
from keel.evals.report import summarize
from keel.evals.suite import Suite, VariantSpec, build_body
from keel.pipeline.trace import Trace

MAX_BACKOFF_S = 30.0
GRADE_ERROR = "__error__"  # the label graders give a grade that could not happen
FLUSH_ROWS, FLUSH_INTERVAL_S = 200, 0.5


@dataclass
class Cell:
    variant: str
    sample: Sample
    repeat: int
    replace: bool = False  # a failed cell of a resumed run: its old row goes


@dataclass
class RunOutcome:
    run_id: str
    summary: dict
    cells_run: int
    cells_kept: int
    config: dict = field(default_factory=dict)


# -- the whole run -------------------------------------------------------------------------


async def run_suite(suite: Suite, config, store, *, resume: str | None = None,
                    progress: bool = True, config_path: str | None = None) -> RunOutcome:
    from keel.gateway import Gateway

    dataset_name, dataset_version, samples = resolve_dataset(suite, store)
    if suite.max_samples is not None:
        samples = samples[: suite.max_samples]
    gateway = Gateway(config)
    check_models(suite, gateway)
    await gateway.start()
    try:
        from keel.evals.gateway_judge import GatewayJudge

        graders = build_graders(suite, GatewayJudge(gateway))
        audit = describe_run(suite, config, graders, dataset_name, dataset_version, samples,
                             config_path)
        run_id, cells, kept = _plan(suite, store, samples, audit, dataset_name,
                                    dataset_version, resume)
        runner = Runner(suite, gateway, graders, store, run_id)
        try:
            await runner.run(cells, progress=progress)
        except BaseException:
            await runner.writer.flush()
            _finish(store, run_id, runs.FAILED, suite, audit, runner.fingerprints)
            print(f"run {run_id} stopped; its finished cells are kept. Resume it with "
                  f"`keel eval run {suite.source} --resume {run_id}`", file=sys.stderr)
            raise
        summary = _finish(store, run_id, runs.FINISHED, suite, audit, runner.fingerprints)
        return RunOutcome(run_id, summary, cells_run=len(cells), cells_kept=kept, config=audit)
    finally:
        await gateway.close()


def _plan(suite, store, samples, audit, dataset_name, dataset_version, resume):
    """The run to write to and the cells it still needs."""
    every = [Cell(v, s, r) for v in suite.variants for s in samples for r in range(suite.repeats)]
    if resume is None:
        run_id = runs.create_run(
            store, suite=suite.name, dataset_name=dataset_name, dataset_version=dataset_version,
            config=audit, git_commit=runs.git_commit(os.getcwd()), keel_version=__version__)
        return run_id, every, 0
    run = runs.get_run(store, resume)
    if run["suite"] != suite.name or run["dataset_version"] != dataset_version:
        raise ConfigError(
            f"run {run['id']} is of suite {run['suite']!r} on dataset "
            f"{run['dataset_name']}@{run['dataset_version'][:12]}; this suite is {suite.name!r} "
            f"on {dataset_name}@{dataset_version[:12]}: it cannot be resumed with it")
    ok, failed = runs.done_cells(store, run["id"])
    todo = []
    for cell in every:
        key = (cell.variant, cell.sample.id, cell.repeat)
        if key not in ok:
            cell.replace = key in failed
            todo.append(cell)
    runs.reopen_run(store, run["id"])
    # The audit stays the one the run started with, plus what this session adds (fingerprints).
    audit.clear()
    audit.update(run["config"])
    return run["id"], todo, len(every) - len(todo)


def _finish(store, run_id, status, suite, audit, fingerprints) -> dict:
    for name, seen in fingerprints.items():
        variant = audit.setdefault("variants", {}).setdefault(name, {})
        variant["system_fingerprints"] = sorted(set(variant.get("system_fingerprints") or [])
                                                | seen)
    summary = summarize(runs.results(store, run_id), list(audit.get("graders") or {}),
                        repeats=suite.repeats)
    runs.finish_run(store, run_id, status, summary, config=audit)
    return summary


# -- setup ---------------------------------------------------------------------------------


def resolve_dataset(suite: Suite, store) -> tuple[str, str, list[Sample]]:
    """(name, version, samples) of the suite's dataset. A file is imported into the store (a
    new version only when its content changed), so every run names data the store holds."""
    from keel.evals.datasets import (
        dataset_version,
        get_dataset,
        import_dataset,
        load_samples,
    )

    path = suite.dataset_path()
    if path is None:
        name, _, version = suite.dataset.partition("@")
        meta, samples = get_dataset(store, name, version or None)
        meta = meta if isinstance(meta, dict) else vars(meta)
        return meta.get("name", name), meta["version"], samples
    if not path.exists():
        raise ConfigError(f"{suite.source}: dataset: no such file {path}")
    samples = load_samples(path)
    if not samples:
        raise ConfigError(f"{suite.source}: dataset: {path} has no samples")
    # Registry datasets are all `samples.jsonl`: their folder is the name (coqa/samples.jsonl).
    name = path.parent.name if path.stem == "samples" and path.parent.name else path.stem
    name, version, _ = import_dataset(store, name, samples, str(path))
    return name, version or dataset_version(samples), samples


def check_models(suite: Suite, gateway) -> None:
    known = ", ".join(sorted(gateway.routes)) or "none"
    for name, variant in suite.variants.items():
        if variant.model not in gateway.routes:
            raise ConfigError(f"{suite.source}: variants.{name}.model: no model "
                              f"{variant.model!r} in the gateway config (models: {known})")
    if any(_judged(spec.kind) for spec in suite.graders):
        if suite.judge.model not in gateway.routes:
            raise ConfigError(f"{suite.source}: judge.model: no model {suite.judge.model!r} in "
                              f"the gateway config (models: {known})")


def _judged(kind: str) -> bool:
    """Whether a grader kind takes a judge `model` option (model-graded)."""
    from keel.plugins import load

    try:
        cls = load("keel.graders", kind, "grader kind")
    except (ConfigError, ImportError, AttributeError):
        return False
    return "model" in getattr(getattr(cls, "Options", None), "model_fields", {})


def build_graders(suite: Suite, judge) -> dict:
    from pydantic import ValidationError

    from keel.config import describe_validation_error

    graders = {}
    for i, spec in enumerate(suite.graders):
        options = spec.options
        if _judged(spec.kind):
            options.setdefault("model", suite.judge.model)
        where = f"graders[{i}]"
        try:
            graders[spec.label] = _make_grader(spec.kind, spec.label, options, judge)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(suite.source, exc, prefix=where)) from None
        except KeelError as exc:
            raise ConfigError(f"{suite.source}: {where} ({spec.label}): {exc.message}") from None
    return graders


def _make_grader(kind: str, name: str, options: dict, judge):
    try:
        from keel.evals.graders import make_grader
    except ImportError:  # a graders package without the factory: build from the registry
        from keel.plugins import load

        cls = load("keel.graders", kind, "grader kind")
        return cls(name, cls.Options.model_validate(options), judge)
    return make_grader(kind, name, options, judge)


def describe_run(suite: Suite, config, graders: dict, dataset_name: str, dataset_version: str,
                 samples: list, config_path: str | None) -> dict:
    """The audit stored with the run: everything that decided its numbers."""
    return {
        "suite": {"name": suite.name, "file": suite.source, "description": suite.description,
                  "concurrency": suite.concurrency, "repeats": suite.repeats,
                  "retries": suite.retries},
        "dataset": {"name": dataset_name, "version": dataset_version, "samples": len(samples),
                    "source": suite.dataset, "max_samples": suite.max_samples},
        "gateway_config": config_path,
        "variants": {name: describe_variant(v, config) for name, v in suite.variants.items()},
        "judge": {"model": suite.judge.model, **_route_of(suite.judge.model, config)},
        "graders": {name: _describe_grader(g) for name, g in graders.items()},
        "user": runs.os_user(),
    }


def describe_variant(variant: VariantSpec, config) -> dict:
    model = config.models.get(variant.model)
    prompt = variant.prompt.model_dump(exclude_none=True) if variant.prompt else None
    described = {"model": variant.model, **_route_of(variant.model, config), "prompt": prompt,
                 "params": dict(variant.params), "system_fingerprints": []}
    if model is not None:
        described.update(
            model_defaults=model.defaults.body(),
            pipeline=[s.name for s in model.layer_specs(config.pipeline)],
            retrieval=model.knowledge,
            tools=model.tools,
            pricing=model.pricing.model_dump() if model.pricing else None,
        )
    return described


def _route_of(name: str, config) -> dict:
    model = config.models.get(name)
    if model is None:
        return {}
    provider = config.providers.get(model.provider)
    return {"provider": model.provider, "provider_kind": provider.kind if provider else None,
            "upstream_model": model.model or name}


def _describe_grader(grader) -> dict:
    try:
        return grader.describe()
    except Exception as exc:  # the audit must not stop a run
        return {"kind": getattr(grader, "kind", None), "describe_error": str(exc)}


# -- cells ---------------------------------------------------------------------------------


class Runner:
    def __init__(self, suite: Suite, gateway, graders: dict, store, run_id: str) -> None:
        self.suite = suite
        self.gateway = gateway
        self.graders = graders
        self.writer = ResultWriter(store, run_id)
        self.fingerprints: dict[str, set] = {}
        self._semaphore = asyncio.Semaphore(suite.concurrency)

    async def run(self, cells: list[Cell], progress: bool = True) -> None:
        bar = _progress(progress)
        with bar:
            task = bar.add_task(f"{self.suite.name}", total=len(cells))

            async def one(cell: Cell) -> None:
                async with self._semaphore:
                    row = await self.run_cell(cell)
                await self.writer.add(row)
                bar.advance(task)

            try:
                await _gather_all(one(cell) for cell in cells)
            finally:
                await self.writer.flush()

    async def run_cell(self, cell: Cell) -> dict:
        variant = self.suite.variants[cell.variant]
        output = await self.call(build_body(variant, cell.sample), variant.model)
        if output.system_fingerprint:
            self.fingerprints.setdefault(cell.variant, set()).add(output.system_fingerprint)
        grades = await self.grade(cell.sample, output)
        return {
            "variant": cell.variant, "sample_id": cell.sample.id, "repeat": cell.repeat,
            "output": None if output.error else {"text": output.text, "response": output.response},
            "error": output.error, "latency_ms": output.latency_ms,
            "prompt_tokens": output.prompt_tokens, "completion_tokens": output.completion_tokens,
            "cost_usd": output.cost_usd, "system_fingerprint": output.system_fingerprint,
            "trace_id": output.trace_id, "grades": {k: g.to_dict() for k, g in grades.items()},
            "created_at": time.time(), "replace": cell.replace,
        }

    async def call(self, body: dict, model: str) -> Output:
        attempt = 0
        while True:
            trace = Trace()
            started = time.perf_counter()
            try:
                response = await self.gateway.complete(dict(body), trace=trace)
            except KeelError as exc:
                if exc.retryable and attempt < self.suite.retries:
                    await asyncio.sleep(self._backoff(attempt, exc))
                    attempt += 1
                    continue
                return _failed(exc, started, trace, attempt)
            except Exception as exc:  # a bug in a layer: record it, keep the run going
                return _failed(exc, started, trace, attempt)
            return self._output(response, started, trace, model)

    def _backoff(self, attempt: int, exc: KeelError) -> float:
        wait = self.suite.retry_backoff_s * (2 ** attempt)
        if isinstance(exc, UpstreamRateLimited):
            try:
                wait = max(wait, float(exc.headers.get("Retry-After", 0)))
            except ValueError:
                pass
        return min(wait, MAX_BACKOFF_S)

    def _output(self, response: dict, started: float, trace: Trace, model: str) -> Output:
        usage = response.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        pricing = getattr(self.gateway.config.models.get(model), "pricing", None)
        return Output(
            text=_answer_text(response),
            response=response,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=pricing.cost(prompt, completion) if pricing else None,
            system_fingerprint=response.get("system_fingerprint"),
            trace_id=trace.id,
        )

    async def grade(self, sample: Sample, output: Output) -> dict[str, Grade]:
        if output.error is not None:
            # No answer to grade: every grader scores it 0, so errors count against a variant.
            problem = f"no output: {output.error.get('message')}"
            return {name: Grade(0.0, passed=False, label=GRADE_ERROR, details={"error": problem})
                    for name in self.graders}
        names = list(self.graders)
        found = await asyncio.gather(*(self._grade_one(self.graders[n], sample, output)
                                       for n in names))
        return dict(zip(names, found))

    @staticmethod
    async def _grade_one(grader, sample: Sample, output: Output) -> Grade:
        try:
            return await grader.grade(sample, output)
        except Exception as exc:  # a third-party grader that raises scores 0 and says why
            return Grade(0.0, passed=False, label=GRADE_ERROR,
                         details={"error": f"grader failed: {type(exc).__name__}: {exc}"})


def _answer_text(response: dict) -> str:
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return message.get("content") or ""


def _failed(exc: Exception, started: float, trace: Trace, retries: int) -> Output:
    error = {"message": getattr(exc, "message", None) or str(exc) or type(exc).__name__,
             "status": getattr(exc, "status", 500), "type": getattr(exc, "type", "server_error"),
             "retries": retries}
    return Output(text=None, error=error, trace_id=trace.id,
                  latency_ms=(time.perf_counter() - started) * 1000.0)


async def _gather_all(coros) -> None:
    # Cancel the rest when one fails (or on Ctrl-C), instead of leaving tasks running.
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)


class ResultWriter:
    """Buffers finished cells and writes them in batches off the event loop."""

    def __init__(self, store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._rows: list[dict] = []
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= FLUSH_ROWS or time.monotonic() - self._last > FLUSH_INTERVAL_S:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            self._last = time.monotonic()
            if rows:
                # Shielded: a Ctrl-C arriving mid-write must not lose rows already finished.
                await asyncio.shield(asyncio.to_thread(runs.write_results, self.store,
                                                       self.run_id, rows))
