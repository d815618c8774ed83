"""`keel eval`: run suites, list and show runs, compare two, export them, gate CI on them.

    keel eval run suite.yaml [--config keel.yaml] [--fail-under fact=0.7]
                             [--max-regression fact=0.05] [--baseline RUN]
    keel eval run registry/evals/x.yaml --model smollm2      # an OpenAI evals registry YAML
                  [--max-samples N] [--max-tokens N] [--temperature T] [--seed S]
    keel eval list | show RUN | compare RUN_A RUN_B | export RUN --format csv | report RUN

Runs live in the store of the gateway config (`--config`, or the suite's `config:`), or `--db`.
Exit codes: 0 ok, 1 a CI gate failed, 2 a usage or config error (one red line).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.errors import ConfigError, InvalidRequest


@click.group("eval")
def eval_group() -> None:
    """Evaluate models and prompts on datasets, and track the runs."""


# -- run -------------------------------------------------------------------------------------


def _thresholds(ctx, param, values) -> dict[str, float]:
    found = {}
    for value in values:
        grader, sep, number = value.partition("=")
        try:
            found[grader.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not grader.strip():
            raise click.BadParameter(f"expected GRADER=NUMBER, got {value!r}")
    return found


@eval_group.command("run")
@click.argument("suite_path", metavar="SUITE", type=click.Path(exists=True, dir_okay=False))
@store_options
@click.option("--resume", metavar="RUN", help="Continue this run: only missing or failed cells.")
@click.option("--model", help="Registry evals: the Keel model to evaluate.")
@click.option("--judge-model", help="Registry evals: the judge (default: --model).")
@click.option("--eval", "eval_name", help="Registry evals: run only this eval of the file.")
@click.option("--max-samples", type=click.IntRange(min=1), metavar="N",
              help="Only the dataset's first N samples.")
@click.option("--max-tokens", type=click.IntRange(min=1), metavar="N",
              help="max_tokens of every answer request (registry evals default to 512).")
@click.option("--temperature", type=click.FloatRange(0, 2), help="temperature of every answer "
              "request.")
@click.option("--seed", type=int, help="seed of every answer request.")
@click.option("--fail-under", multiple=True, callback=_thresholds, metavar="GRADER=SCORE",
              help="Exit 1 when a grader's mean is below SCORE (any variant). Repeatable.")
@click.option("--max-regression", multiple=True, callback=_thresholds, metavar="GRADER=DROP",
              help="Exit 1 when a grader's mean fell more than DROP from the baseline run.")
@click.option("--baseline", metavar="RUN", help="Baseline for --max-regression "
              "(default: the previous finished run of the same suite).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
def run_command(suite_path, config_path, db_url, resume, model, judge_model, eval_name,
                max_samples, max_tokens, temperature, seed, fail_under, max_regression,
                baseline, no_progress, as_json) -> None:
    """Run a suite (or an OpenAI evals registry YAML) and print its summary.

    --max-tokens, --temperature and --seed override what every variant sends (the judge keeps
    its own settings); a grade that could not be made is listed with its reason."""
    from keel.config import load_config
    from keel.evals.gate import check_gates
    from keel.evals.report import problems, summary_table
    from keel.evals.runner import run_suite
    from keel.evals.runs import results
    from keel.store import open_store

    params = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature),
                                ("seed", seed)) if v is not None}
    suites = _suites(suite_path, model, judge_model, eval_name, config_path, max_samples, params)
    if resume and len(suites) > 1:
        raise InvalidRequest("--resume takes one suite; pick the eval with --eval")
    console, reports, failed = common.console(), [], False
    for suite in suites:
        gateway_config = config_path or suite.config_path()
        config = load_config(gateway_config)
        store = open_store(db_url or config.database_url())
        try:
            outcome = asyncio.run(run_suite(
                suite, config, store, resume=resume, progress=not (no_progress or as_json),
                config_path=str(gateway_config) if gateway_config else None))
            gate = check_gates(store, suite.name, outcome.run_id, outcome.summary,
                               fail_under, max_regression, baseline)
            found = problems(results(store, outcome.run_id))
        finally:
            store.close()
        failed = failed or not gate["passed"]
        reports.append({"run_id": outcome.run_id, "suite": suite.name,
                        "cells_run": outcome.cells_run, "cells_kept": outcome.cells_kept,
                        "summary": outcome.summary, "gate": gate, "problems": found})
        if not as_json:
            _print_run(console, reports[-1], summary_table)
    if as_json:
        click.echo(common.dumps(reports[0] if len(reports) == 1 else reports))
    if failed:
        raise SystemExit(1)


def _suites(path, model, judge_model, eval_name, config_path, max_samples=None, params=None):
    import yaml

    from keel.evals.registry import is_registry, load_registry_suites
    from keel.evals.suite import load_suite

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if is_registry(raw):
        if not model:
            raise InvalidRequest(f"{path} is an OpenAI evals registry file: name the model to "
                                 f"evaluate with --model")
        return load_registry_suites(path, model, eval_name=eval_name, judge_model=judge_model,
                                    config=config_path, max_samples=max_samples, params=params)
    for flag, value in (("--model", model), ("--judge-model", judge_model),
                        ("--eval", eval_name)):
        if value:
            raise InvalidRequest(f"{flag} is for OpenAI evals registry files; a suite names "
                                 f"its models in `variants`")
    return [load_suite(path).override(params or {}, max_samples)]


def _print_run(console: Console, report: dict, summary_table) -> None:
    kept = report["cells_kept"]
    resumed = f" (resumed: {kept} cells kept)" if kept else ""
    console.print(Text(f"run {report['run_id']} · suite {report['suite']} · "
                       f"{report['cells_run']} cells run{resumed}", style="bold"))
    console.print(summary_table(report["summary"]))
    _print_problems(console, report)
    gate = report["gate"]
    for note in gate["notes"]:
        console.print(Text(note, style="yellow"))
    for failure in gate["failures"]:
        console.print(Text(f"FAIL {failure}", style="bold red"))
    if gate["checked"] and gate["passed"]:
        console.print(Text("gates passed", style="green"))


def _print_problems(console: Console, report: dict, limit: int = 10) -> None:
    found = report["problems"]
    if not found:
        return
    console.print(Text(f"{len(found)} answers or grades failed:", style="yellow"))
    for p in found[:limit]:
        repeat = f"#{p['repeat']}" if p["repeat"] else ""
        grader = f" · {p['grader']}" if p["grader"] else ""
        console.print(Text(f"  {p['sample_id']}{repeat} · {p['variant']}{grader}: {p['problem']}",
                           style="yellow"), overflow="fold")
    if len(found) > limit:
        console.print(Text(f"  … {len(found) - limit} more: keel eval show {report['run_id']} "
                           "--samples (or --json)", style="dim"))


# -- list / show -----------------------------------------------------------------------------


@eval_group.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--suite", help="Only runs of this suite.")
@store_options
@json_option
def list_command(limit, suite, config_path, db_url, as_json) -> None:
    """The newest runs first, with each variant's grader means."""
    from keel.evals.runs import list_runs

    with _open_store(config_path, db_url) as store:
        rows = list_runs(store, limit=limit, suite=suite)
    if as_json:
        click.echo(common.dumps(rows))
        return
    if not rows:
        click.echo("no eval runs")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("id", "time", "suite", "status", "dataset", "git", "variant: grader means"):
        table.add_column(name, no_wrap=name != "variant: grader means")
    for run in rows:
        table.add_row(run["id"], common.when(run["created_at"]), run["suite"], _status(run["status"]),
                      f"{run['dataset_name']}@{run['dataset_version'][:8]}",
                      (run.get("git_commit") or "-")[:8], _means(run.get("summary")))
    common.console().print(table)


@eval_group.command("show")
@click.argument("run_id", metavar="RUN")
@click.option("--samples", is_flag=True, help="Also list every cell's output and grades.")
@store_options
@json_option
def show_command(run_id, samples, config_path, db_url, as_json) -> None:
    """One run: its audit (dataset, variants, graders, judge, git, Keel version), summary and
    the human grades given to its outputs (`keel eval annotate`, or the console)."""
    from keel.evals.annotate import run_annotations
    from keel.evals.report import export_rows, summary_table
    from keel.evals.runs import get_run, results, run_samples

    with _open_store(config_path, db_url) as store:
        run = get_run(store, run_id)
        cells = results(store, run["id"]) if (samples or as_json) else []
        by_id = run_samples(store, run) if (samples or as_json) else {}
        notes = run_annotations(store, run["id"])
    if as_json:
        click.echo(common.dumps({**run, "results": export_rows(run, cells, by_id),
                                 "annotations": notes}))
        return
    console = common.console()
    _print_audit(console, run)
    console.print(summary_table(run.get("summary") or {}))
    if notes:
        console.print(Text(f"\n{len(notes)} human annotation(s)", style="bold"))
        console.print(_annotations_table(notes))
    if samples:
        console.print(_cells_table(export_rows(run, cells, by_id)))


def _annotations_table(notes: list[dict]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("sample", "variant", "grade", "annotator", "time", "comment", "ideal"):
        table.add_column(name, overflow="fold", no_wrap=name in ("sample", "grade", "time"))
    for n in notes:
        repeat = f"#{n['repeat']}" if n.get("repeat") else ""
        table.add_row(n["sample_id"] + repeat, n.get("variant") or "-", n.get("label") or "-",
                      n.get("annotator") or "-", common.when(n["created_at"]),
                      n.get("comment") or "", _short(_ideal(n.get("ideal")), 60))
    return table


def _print_audit(console: Console, run: dict) -> None:
    config = run.get("config") or {}
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    dataset = config.get("dataset") or {}
    for label, value in [
        ("run", run["id"]),
        ("suite", f"{run['suite']} ({(config.get('suite') or {}).get('file')})"),
        ("status", run["status"]), ("time", common.when(run["created_at"])),
        ("dataset", f"{run['dataset_name']}@{run['dataset_version']} "
                    f"({dataset.get('samples', '?')} samples"
                    + (f", --max-samples {dataset['max_samples']})" if dataset.get("max_samples")
                       else ")")),
        ("gateway config", config.get("gateway_config") or "(default)"),
        ("git commit", run.get("git_commit") or "-"), ("keel", run["keel_version"]),
        ("judge", _route(config.get("judge") or {})),
    ]:
        grid.add_row(label, str(value))
    for name, variant in (config.get("variants") or {}).items():
        grid.add_row(f"variant {name}", _variant_line(variant))
    for name, grader in (config.get("graders") or {}).items():
        grid.add_row(f"grader {name}", _short(grader, 300))
    console.print(grid)


def _variant_line(v: dict) -> str:
    parts = [_route(v)]
    prompt = v.get("prompt") or {}
    if prompt.get("system"):
        parts.append(f"system={_short(prompt['system'], 80)}")
    if prompt.get("messages"):
        parts.append(f"messages={_short(prompt['messages'], 80)}")
    if v.get("params"):
        parts.append(f"params={_short(v['params'])}")
    if v.get("retrieval"):
        parts.append(f"retrieval={_short(v['retrieval'])}")
    parts.append(f"fingerprints={','.join(v.get('system_fingerprints') or []) or '-'}")
    return " · ".join(parts)


def _cells_table(rows: list[dict]) -> Table:
    from keel.evals.report import fmt, message_text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("sample", "variant", "input", "ideal", "output", "grades"):
        table.add_column(name, overflow="fold", max_width=None if name == "grades" else 40)
    for row in rows:
        answer = row["output"] if row["error"] is None else f"ERROR {row['error'].get('message')}"
        grades = " ".join(f"{g}={fmt(v.get('score'), 2)}" + _problem(v)
                          for g, v in row["grades"].items())
        table.add_row(row["sample_id"] + (f"#{row['repeat']}" if row["repeat"] else ""),
                      row["variant"], message_text(row["input"] or []), _ideal(row["ideal"]),
                      answer or "", grades)
    return table


# -- compare ---------------------------------------------------------------------------------


@eval_group.command("compare")
@click.argument("run_a", metavar="RUN_A[:VARIANT]")
@click.argument("run_b", metavar="RUN_B[:VARIANT]")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=0),
              help="At most this many regressed (and improved) samples shown.")
@store_options
@json_option
def compare_command(run_a, run_b, limit, config_path, db_url, as_json) -> None:
    """Per grader: means with 95% bootstrap intervals and the difference; then the samples that
    regressed and improved, side by side."""
    from keel.evals.compare import compare, pair_variants
    from keel.evals.runs import get_run, results, run_samples

    (id_a, want_a), (id_b, want_b) = _run_ref(run_a), _run_ref(run_b)
    with _open_store(config_path, db_url) as store:
        a, b = get_run(store, id_a), get_run(store, id_b)
        cells_a, cells_b = results(store, a["id"]), results(store, b["id"])
        samples = {**run_samples(store, a), **run_samples(store, b)}
    pairs = pair_variants(_variants(a, cells_a), _variants(b, cells_b), want_a, want_b)
    found = compare(cells_a, cells_b, pairs, samples)
    if as_json:
        click.echo(common.dumps({"run_a": a["id"], "run_b": b["id"], "pairs": found}))
        return
    console = common.console()
    if a["dataset_version"] != b["dataset_version"]:
        console.print(Text(f"note: the runs used different dataset versions "
                           f"({a['dataset_version'][:12]} vs {b['dataset_version'][:12]}); "
                           f"only shared samples are compared", style="yellow"))
    for pair in found:
        _print_pair(console, a["id"], b["id"], pair, limit)


def _run_ref(ref: str) -> tuple[str, str | None]:
    run, _, variant = ref.partition(":")
    return run, variant or None


def _variants(run: dict, cells: list[dict]) -> list[str]:
    names = list(((run.get("config") or {}).get("variants") or {}))
    return names + sorted({c["variant"] for c in cells} - set(names))


def _print_pair(console: Console, id_a: str, id_b: str, pair: dict, limit: int) -> None:
    from keel.evals.report import fmt

    console.print(Text(f"\nA = {id_a}:{pair['variant_a']}   B = {id_b}:{pair['variant_b']}",
                       style="bold"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("grader", "n", "mean A [95% CI]", "mean B [95% CI]", "B − A [95% CI]"):
        table.add_column(name, justify="left" if name == "grader" else "right", no_wrap=True)
    for grader, s in pair["graders"].items():
        diff = s["diff"]
        style = "" if diff is None or abs(diff) < 1e-9 else ("green" if diff > 0 else "red")
        table.add_row(grader, str(s["n"]), _with_ci(s["mean_a"], s["ci_a"]),
                      _with_ci(s["mean_b"], s["ci_b"]),
                      Text(_with_ci(diff, s["ci_diff"], signed=True), style=style))
    console.print(table)
    for title, entries, style in (("regressed", pair["regressed"], "red"),
                                  ("improved", pair["improved"], "green")):
        console.print(Text(f"\n{len(entries)} {title}", style=f"bold {style}"))
        if entries and limit:
            console.print(_side_by_side(entries[:limit], fmt))
        if len(entries) > limit:
            console.print(Text(f"… {len(entries) - limit} more (--limit, or --json)", "dim"))


def _side_by_side(entries: list[dict], fmt) -> Table:
    table = Table(show_lines=True, header_style="bold", pad_edge=False)
    for name in ("sample", "input", "ideal", "output A", "output B", "grades A → B"):
        table.add_column(name, overflow="fold", max_width=36)
    for e in entries:
        grades = "\n".join(
            f"{g}: {fmt(e['scores_a'].get(g), 2)} → {fmt(e['scores_b'].get(g), 2)}"
            + _labels(e, g) for g in e["delta"])
        # Long answers are cut here; `--json` and `keel eval show --samples` have them whole.
        table.add_row(e["sample_id"], _short(e["input"] or "", 160), _short(_ideal(e["ideal"])),
                      _short(e["output_a"], 160), _short(e["output_b"], 160), grades)
    return table


def _labels(entry: dict, grader: str) -> str:
    la = (entry["grades_a"].get(grader) or {}).get("label")
    lb = (entry["grades_b"].get(grader) or {}).get("label")
    return f" ({la} → {lb})" if la or lb else ""


def _with_ci(value, ci, signed: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    return f"{value:{sign}.3f} [{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]"


# -- export / report -------------------------------------------------------------------------


@eval_group.command("export")
@click.argument("run_id", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
@store_options
def export_command(run_id, fmt, output, config_path, db_url) -> None:
    """Every cell of a run as CSV (one column per grade) or JSONL."""
    from keel.evals.report import export_rows, to_csv, to_jsonl
    from keel.evals.runs import get_run, results, run_samples

    with _open_store(config_path, db_url) as store:
        run = get_run(store, run_id)
        rows = export_rows(run, results(store, run["id"]), run_samples(store, run))
    text = to_csv(rows) if fmt == "csv" else to_jsonl(rows)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    else:
        click.echo(text, nl=False)


@eval_group.command("report")
@click.argument("run_id", metavar="RUN")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True)
@store_options
def report_command(run_id, output, config_path, db_url) -> None:
    """A self-contained HTML page: summary, audit, every sample's outputs and grades."""
    from keel.evals.report import to_html
    from keel.evals.runs import get_run, results, run_samples

    with _open_store(config_path, db_url) as store:
        run = get_run(store, run_id)
        page = to_html(run, results(store, run["id"]), run_samples(store, run))
    Path(output).write_text(page)
    click.echo(f"wrote {output}")


# -- helpers ---------------------------------------------------------------------------------


class _open_store:
    """The store of `--db` or the config, for reading (it must already exist); closed after."""

    def __init__(self, config_path: str | None, db_url: str | None) -> None:
        self.store = common.open_store_for(config_path, db_url)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()


def _status(status: str) -> Text:
    return Text(status, style={"finished": "green", "failed": "red"}.get(status, "yellow"))


def _means(summary: dict | None) -> str:
    from keel.evals.report import fmt

    parts = []
    for variant, v in ((summary or {}).get("variants") or {}).items():
        means = " ".join(f"{g} {fmt(s['mean'], 2)}" for g, s in v["graders"].items())
        parts.append(f"{variant}: {means}")
    return "; ".join(parts) or "-"


def _route(v: dict) -> str:
    route = f"{v.get('provider')} → {v.get('upstream_model')}" if v.get("provider") else ""
    return f"{v.get('model')} ({route})" if route else str(v.get("model") or "-")


def _problem(grade: dict) -> str:
    from keel.evals.report import PROBLEM_LABELS, grade_note

    return f" ({grade_note(grade)})" if grade.get("label") in PROBLEM_LABELS else ""


def _ideal(ideal) -> str:
    if isinstance(ideal, list):
        return " | ".join(map(str, ideal))
    return "" if ideal is None else str(ideal)


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mount() -> None:
    """Add the dataset, annotate and calibrate commands, once their modules exist."""
    try:
        from keel.cli.eval_dataset import dataset
    except ImportError:
        pass
    else:
        eval_group.add_command(dataset)
    try:
        from keel.cli.eval_human import annotate, calibrate
    except ImportError:
        pass
    else:
        eval_group.add_command(annotate)
        eval_group.add_command(calibrate)


_mount()
