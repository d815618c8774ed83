"""`keel eval annotate` and `keel eval calibrate`: people grade, and judges are checked
against them.

annotate shows one sample (or one output of a run) at a time and saves each answer at once;
`q` (or Ctrl-C, or the end of input) stops, and the next session skips what this annotator has
already done. calibrate compares a run's graders with those human grades.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, open_store_for, store_options
from keel.cli.eval_dataset import _ideal, _messages
from keel.errors import InvalidRequest

PROMPT_HELP = ("grade: pass/fail (p/f), 1-5 or a label · i: write an ideal answer · "
               "s: skip · q: quit")


@click.command()
@click.option("--dataset", "dataset_name", metavar="NAME", help="Annotate a dataset's samples.")
@click.option("--version", metavar="V", help="Dataset version (default: latest).")
@click.option("--run", "run_id", metavar="RUN_ID", help="Annotate a run's outputs.")
@click.option("--variant", help="Only this variant's outputs (with --run).")
@click.option("--annotator", help="Your name on the annotations (default: your user name).")
@click.option("--blind", is_flag=True,
              help="Hide the graders' verdicts (with --run), so they cannot sway you.")
@store_options
def annotate(dataset_name, version, run_id, variant, annotator, blind, config_path,
             db_url) -> None:
    """Grade outputs or write ideal answers, one sample at a time, saved as you go."""
    from keel.evals.annotate import dataset_queue, default_annotator, run_queue

    if bool(dataset_name) == bool(run_id):
        raise InvalidRequest("give one of --dataset NAME or --run RUN_ID")
    annotator = annotator or default_annotator()
    store = open_store_for(config_path, db_url)
    try:
        if dataset_name:
            meta, items = dataset_queue(store, dataset_name, version, annotator)
            title = f"dataset {meta['name']} {meta['version']}"
        else:
            run, items = run_queue(store, run_id, annotator, variant)
            title = f"run {run['id']} ({run['suite']})"
        console = common.console()
        console.print(Text(f"{title}: {len(items)} left for {annotator}", style="bold"))
        saved = _annotate_loop(console, store, items, annotator, blind)
        console.print(Text(f"saved {saved} annotation(s)", style="bold"))
        if dataset_name:
            _version_ideals(console, store, meta["name"], meta["version"], dataset_id=meta["id"])
        elif run["dataset_name"] and _has_dataset(store, run):
            _version_ideals(console, store, run["dataset_name"], run["dataset_version"],
                            run_id=run["id"])
    finally:
        store.close()


def _version_ideals(console: Console, store, name: str, version: str, **source) -> None:
    from keel.evals.annotate import version_with_ideals

    result = version_with_ideals(store, name, version, **source)
    if result is None:
        return
    new_version, created, changed = result
    state = "new version" if created else "version"
    console.print(Text(f"ideal answers: dataset {name} {state} {new_version} "
                       f"({changed} sample(s) changed from {version})", style="bold"))


def _has_dataset(store, run) -> bool:
    from keel.evals.dataset_store import DatasetNotFound, get_dataset

    try:
        get_dataset(store, run["dataset_name"], run["dataset_version"])
    except DatasetNotFound:
        return False
    return True


def _annotate_loop(console: Console, store, items, annotator: str, blind: bool) -> int:
    from keel.evals.annotate import save_annotation

    saved = 0
    for number, item in enumerate(items, start=1):
        _show_item(console, item, number, len(items), blind)
        try:
            answer = _ask(console)
        except click.Abort:  # Ctrl-C or no more input: everything answered is already saved
            console.print()
            break
        if answer == "quit":
            break
        if answer is None:
            continue
        save_annotation(store, item, answer, annotator)
        saved += 1
    return saved


def _ask(console: Console):
    """An Answer, None to skip, or "quit"."""
    from keel.evals.annotate import Answer, parse_grade

    console.print(Text(PROMPT_HELP, style="dim"))
    while True:
        word = click.prompt("grade", prompt_suffix="> ").strip()
        if word.lower() in ("q", "quit"):
            return "quit"
        if word.lower() in ("s", "skip"):
            return None
        if word.lower() == "i":
            answer = Answer(ideal=click.prompt("ideal answer", prompt_suffix="> "))
            break
        try:
            answer = parse_grade(word)
            break
        except InvalidRequest as exc:
            console.print(Text(exc.message, style="red"))
    answer.comment = click.prompt("comment (enter to skip)", default="", show_default=False,
                                  prompt_suffix="> ").strip() or None
    return answer


def _show_item(console: Console, item, number: int, total: int, blind: bool) -> None:
    where = f"[{number}/{total}] sample {item.sample_id}"
    if item.variant is not None:
        where += f" · variant {item.variant} · repeat {item.repeat}"
    console.rule(Text(where, style="bold"))
    if item.sample is not None:
        console.print(Text("input", style="bold"))
        console.print(Text(_messages(item.sample.input)))
        console.print(Text("ideal", style="bold"), Text(_ideal(item.sample.ideal)))
    else:
        console.print(Text("(the run's dataset version is not in this store)", style="dim"))
    if item.run_id is not None:
        console.print(Text("output", style="bold"))
        text = item.output_text
        console.print(Text(text) if text is not None else Text(common.dumps(item.output), "dim"))
        if item.grades and not blind:
            console.print(_grades_table(item.grades))


def _grades_table(grades: dict) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in ("grader", "verdict", "score", "label", "reasoning"):
        table.add_column(column, overflow="fold", no_wrap=column != "reasoning")
    for name, grade in grades.items():
        grade = grade or {}
        passed = grade.get("passed")
        verdict = Text("-" if passed is None else ("pass" if passed else "fail"),
                       style="" if passed is None else ("green" if passed else "red"))
        score = grade.get("score")
        table.add_row(name, verdict, "-" if score is None else f"{score:.2f}",
                      str(grade.get("label") or "-"), grade.get("reasoning") or "")
    return table


@click.command()
@click.argument("run_id")
@click.option("--grader", help="Only this grader.")
@click.option("--pass-at", default=4, show_default=True, type=click.IntRange(1, 5),
              help="A human 1-5 rating at or above this counts as pass.")
@click.option("--judges", nargs=2, metavar="STRONG CHEAP", default=None,
              help="Two graders of the run side by side: each against people, and CHEAP "
              "against STRONG (e.g. a distilled judge against the one it learned from).")
@store_options
@json_option
def calibrate(run_id, grader, pass_at, judges, config_path, db_url, as_json) -> None:
    """Each grader's agreement with the human grades of RUN_ID: accuracy and Cohen's kappa."""
    from keel.evals.calibrate import calibrate_run

    if judges:
        _calibrate_judges(run_id, judges, pass_at, config_path, db_url, as_json)
        return
    store = open_store_for(config_path, db_url)
    try:
        run, agreements = calibrate_run(store, run_id, grader, pass_at)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps({"run_id": run["id"], "agreements": [a.to_dict() for a in agreements]}))
        return
    if not agreements:
        click.echo(f"no human grades to compare on run {run['id']} (run `keel eval annotate "
                   f"--run {run['id']}` first)")
        return
    console = common.console()
    console.print(_summary_table(agreements))
    for item in agreements:
        # A heading of its own: as a table title it would wrap to the narrow table's width.
        console.print(Text(f"\n{item.grader} ({item.kind}): human ↓ / grader →", style="bold"))
        console.print(_confusion_table(item))


def _calibrate_judges(run_id, judges, pass_at, config_path, db_url, as_json) -> None:
    from keel.evals.calibrate import calibrate_judges

    strong, cheap = judges
    store = open_store_for(config_path, db_url)
    try:
        run, found = calibrate_judges(store, run_id, strong, cheap, pass_at)
    finally:
        store.close()
    rows = [(f"{name} vs people", a) for name in (cheap, strong) for a in found["people"][name]]
    rows += [(f"{cheap} vs {strong}", a) for a in found["between"]]
    if as_json:
        click.echo(common.dumps({
            "run_id": run["id"], "strong": strong, "cheap": cheap,
            "people": {k: [a.to_dict() for a in v] for k, v in found["people"].items()},
            "between": [a.to_dict() for a in found["between"]]}))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in [("comparison", "left"), ("kind", "left"), ("n", "right"),
                            ("accuracy", "right"), ("kappa", "right"), ("reading", "left")]:
        table.add_column(column, justify=justify, no_wrap=True)
    for label, a in rows:
        table.add_row(label, a.kind, str(a.n), _number(a.accuracy), _number(a.kappa), a.reading)
    console = common.console()
    console.print(Text(f"run {run['id']}: {cheap} (cheap) and {strong} (strong)", style="bold"))
    console.print(table)
    if not found["people"][strong] and not found["people"][cheap]:
        console.print(f"no human grades on run {run['id']} yet (keel eval annotate --run "
                      f"{run['id']})")


def _summary_table(agreements) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in [("grader", "left"), ("kind", "left"), ("n", "right"),
                            ("accuracy", "right"), ("kappa", "right"), ("reading", "left")]:
        table.add_column(column, justify=justify, no_wrap=True)
    for a in agreements:
        table.add_row(a.grader, a.kind, str(a.n), _number(a.accuracy), _number(a.kappa),
                      a.reading)
    return table


def _confusion_table(agreement) -> Table:
    columns = sorted({label for row in agreement.confusion.values() for label in row})
    table = Table(header_style="bold")
    table.add_column("human")
    for column in columns:
        table.add_column(column, justify="right")
    for human in sorted(agreement.confusion):
        row = agreement.confusion[human]
        table.add_row(human, *(str(row.get(c, 0)) for c in columns))
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
