"""Console pages: eval runs, one run's samples, two runs compared, a suite's scores over time.

    GET /console/evals                  runs, newest first (?suite=), with a chart per suite
    GET /console/evals/compare?a=&b=    two runs side by side (RUN or RUN:VARIANT each)
    GET /console/evals/{run_id}         a run: audit, summary, every cell (?failures=1, ?variant=)

Everything is read through keel.evals.runs / compare / report / annotate, as `keel eval list`,
`show` and `compare` read it; the compare page shows the numbers `keel eval compare` prints.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.console.render import error_page as render_error
from keel.console.render import render
from keel.errors import InvalidRequest, KeelError

RUN_LIMIT = 200
CHART_RUNS = 50


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/evals", run_list, name="console-evals")
    # Before /{run_id}: "compare" is not a run.
    router.add_get("/console/evals/compare", compare_page, name="console-evals-compare")
    router.add_get("/console/evals/{run_id}", run_page, name="console-eval-run")


def _store(request: web.Request):
    return request.app[GATEWAY].runtime.store


def error_page(request: web.Request, exc: KeelError, heading: str = "Eval runs") -> web.Response:
    """A KeelError as an HTML page with its status (404 unknown run, 400 bad input)."""
    status = exc.status if 400 <= exc.status < 500 else 500
    return render_error(request, status, heading, exc.message,
                        [("/console/evals", "All eval runs"),
                         ("/console/annotate", "Annotation queues")])


# -- the runs list -----------------------------------------------------------------------------


async def run_list(request: web.Request) -> web.Response:
    from keel.evals.runs import list_runs

    store = _store(request)
    suite = request.query.get("suite", "").strip() or None
    every = await asyncio.to_thread(list_runs, store, RUN_LIMIT)
    suites = sorted({r["suite"] for r in every})
    if suite is not None and suite not in suites:
        return error_page(request, InvalidRequest(
            f"no eval runs of suite {suite!r} (suites with runs: {', '.join(suites) or 'none'})"))
    rows = every if suite is None else await asyncio.to_thread(list_runs, store, RUN_LIMIT, suite)
    runs = [run_row(r) for r in rows]
    charts = suite_charts(rows)
    return render(request, "evals/list.html", title="Eval runs", runs=runs, suites=suites,
                  suite=suite, charts=charts, limit=RUN_LIMIT)


def run_row(run: dict) -> dict[str, Any]:
    """What the list shows of a run: its means and pass rates per variant and grader."""
    config = run.get("config") or {}
    summary = run.get("summary") or {}
    variants = summary.get("variants") or {}
    scores = [
        {"variant": v, "grader": g, "mean": s.get("mean"), "pass_rate": s.get("pass_rate"),
         "n": s.get("n")}
        for v, vs in variants.items() for g, s in (vs.get("graders") or {}).items()
    ]
    return {
        "id": run["id"], "suite": run["suite"], "status": run["status"],
        "created_at": run["created_at"], "finished_at": run.get("finished_at"),
        "dataset": run["dataset_name"], "dataset_version": run["dataset_version"],
        "variants": list(config.get("variants") or variants),
        "graders": list(config.get("graders") or dict.fromkeys(s["grader"] for s in scores)),
        "scores": scores, "git_commit": run.get("git_commit"),
        "keel_version": run.get("keel_version"),
        "by": config.get("user"),  # who ran it, where the audit records it
    }


def suite_charts(runs: list[dict]) -> list[dict]:
    """Per suite: its finished runs oldest first and one series per variant · grader mean,
    as the chart draws them and as the table beside it lists them."""
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run.get("summary"):
            by_suite[run["suite"]].append(run)
    charts = []
    for suite, found in sorted(by_suite.items()):
        found = sorted(found, key=lambda r: r["id"])[-CHART_RUNS:]
        names: list[str] = []
        for run in found:
            for v, vs in run["summary"].get("variants", {}).items():
                names += [f"{v} · {g}" for g in vs.get("graders", {}) if f"{v} · {g}" not in names]
        points = []
        for run in found:
            means = {f"{v} · {g}": s.get("mean")
                     for v, vs in run["summary"].get("variants", {}).items()
                     for g, s in vs.get("graders", {}).items()}
            points.append({"run": run["id"], "time": run["created_at"],
                           "means": [means.get(n) for n in names]})
        charts.append({"suite": suite, "series": names, "points": points,
                       "data": json.dumps({"series": names,
                                           "x": [p["time"] for p in points],
                                           "runs": [p["run"] for p in points],
                                           "y": [[p["means"][i] for p in points]
                                                 for i in range(len(names))]})
                       .replace("<", "\\u003c")})  # safe inside <script>
    return charts


# -- one run -----------------------------------------------------------------------------------


def is_failure(cell: dict) -> bool:
    """A cell that did not answer, or that some grader failed or could not grade."""
    from keel.evals.report import PROBLEM_LABELS

    if cell.get("error"):
        return True
    return any(g.get("passed") is False or g.get("label") in PROBLEM_LABELS
               for g in (cell.get("grades") or {}).values())


async def run_page(request: web.Request) -> web.Response:
    from keel.evals.annotate import run_annotations
    from keel.evals.report import export_rows
    from keel.evals.runs import get_run, results, run_samples

    store = _store(request)
    failures = request.query.get("failures", "") in ("1", "on", "true", "yes")
    variant = request.query.get("variant", "").strip() or None
    try:
        run = await asyncio.to_thread(get_run, store, request.match_info["run_id"])
    except KeelError as exc:
        return error_page(request, exc, "Eval run")
    cells = await asyncio.to_thread(results, store, run["id"])
    samples = await asyncio.to_thread(run_samples, store, run)
    notes = await asyncio.to_thread(run_annotations, store, run["id"])
    variants = _variants(run, cells)
    if variant is not None and variant not in variants:
        return error_page(request, InvalidRequest(
            f"run {run['id']} has no variant {variant!r} (it has: {', '.join(variants)})"),
            "Eval run")
    human: dict[tuple, list[dict]] = defaultdict(list)
    for note in notes:
        human[(note["variant"], note["sample_id"], note["repeat"])].append(note)
    rows = []
    for cell in export_rows(run, cells, samples):
        if variant is not None and cell["variant"] != variant:
            continue
        failed = is_failure(cell)
        if failures and not failed:
            continue
        rows.append({**cell, "failed": failed,
                     "human": human.get((cell["variant"], cell["sample_id"], cell["repeat"]), [])})
    return render(request, "evals/run.html", title=f"Eval run {run['id']}", run=run,
                  row=run_row(run), rows=rows, total=len(cells), failures=failures,
                  variant=variant, variants=variants, config=run.get("config") or {},
                  summary=run.get("summary") or {}, samples_known=bool(samples),
                  annotations=len(notes))


def _variants(run: dict, cells: list[dict]) -> list[str]:
    # As `keel eval compare` names them: the suite's order, then any others the cells have.
    names = list((run.get("config") or {}).get("variants") or {})
    return names + sorted({c["variant"] for c in cells} - set(names))


# -- two runs compared -------------------------------------------------------------------------


def _run_ref(ref: str) -> tuple[str, str | None]:
    run, _, variant = ref.strip().partition(":")
    return run, variant or None


async def compare_page(request: web.Request) -> web.Response:
    from keel.evals.runs import list_runs

    a_ref = request.query.get("a", "").strip()
    b_ref = request.query.get("b", "").strip()
    store = _store(request)
    ticked = [r.strip() for r in request.query.getall("run", []) if r.strip()]
    if ticked:  # the runs list's checkboxes: the older run is A, the newer B
        if len(ticked) != 2:
            return error_page(request, InvalidRequest(
                f"tick exactly two runs to compare (you ticked {len(ticked)})"),
                "Compare eval runs")
        a_ref, b_ref = sorted(ticked)
    if not a_ref and not b_ref:  # nothing picked yet: the form to pick two
        runs = await asyncio.to_thread(list_runs, store, RUN_LIMIT)
        return render(request, "evals/compare.html", title="Compare eval runs", picked=False,
                      runs=runs, a_ref="", b_ref="")
    try:
        if not a_ref or not b_ref:
            raise InvalidRequest("pick two runs to compare: a=RUN and b=RUN (RUN or "
                                 "RUN:VARIANT)")
        found = await asyncio.to_thread(compare_runs, store, a_ref, b_ref)
    except KeelError as exc:
        return error_page(request, exc, "Compare eval runs")
    runs = await asyncio.to_thread(list_runs, store, RUN_LIMIT)
    return render(request, "evals/compare.html", title="Compare eval runs", picked=True,
                  runs=runs, a_ref=a_ref, b_ref=b_ref, **found)


def compare_runs(store, a_ref: str, b_ref: str) -> dict[str, Any]:
    """What `keel eval compare A B` computes (keel.evals.compare), plus the unchanged samples
    with both outputs, so the page can list regressed, improved, then unchanged."""
    from keel.evals.compare import compare, pair_variants
    from keel.evals.report import message_text, output_text
    from keel.evals.runs import get_run, results, run_samples

    (id_a, want_a), (id_b, want_b) = _run_ref(a_ref), _run_ref(b_ref)
    a, b = get_run(store, id_a), get_run(store, id_b)
    cells_a, cells_b = results(store, a["id"]), results(store, b["id"])
    samples = {**run_samples(store, a), **run_samples(store, b)}
    pairs = pair_variants(_variants(a, cells_a), _variants(b, cells_b), want_a, want_b)
    found = compare(cells_a, cells_b, pairs, samples)
    for pair in found:
        first_a = _first(cells_a, pair["variant_a"])
        first_b = _first(cells_b, pair["variant_b"])
        changed = {e["sample_id"] for e in pair["regressed"] + pair["improved"]}
        unchanged = []
        for sample_id in sorted((set(first_a) & set(first_b)) - changed):
            sample = samples.get(sample_id)
            ca, cb = first_a[sample_id], first_b[sample_id]
            unchanged.append({
                "sample_id": sample_id,
                "input": message_text(sample.input) if sample else None,
                "ideal": sample.ideal if sample else None,
                "output_a": _answer(ca, output_text), "output_b": _answer(cb, output_text),
                "grades_a": ca.get("grades") or {}, "grades_b": cb.get("grades") or {},
            })
        pair["unchanged"] = unchanged
    return {"a": a, "b": b, "pairs": found,
            "same_dataset": a["dataset_version"] == b["dataset_version"]}


def _first(cells: list[dict], variant: str) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for cell in sorted((c for c in cells if c["variant"] == variant), key=lambda c: c["repeat"]):
        found.setdefault(cell["sample_id"], cell)
    return found


def _answer(cell: dict, output_text) -> str:
    text = output_text(cell)
    return text if text is not None else f"ERROR: {(cell.get('error') or {}).get('message')}"
