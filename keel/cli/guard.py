"""`keel guard`: test a guard configuration on labelled texts before turning it on.

    keel guard test keel.yaml cases.jsonl [--model support] [--stage input] [--guard pii]
                    [--set prompt_injection.threshold=0.8] [--json] [--save [--variant NAME]]

Prints what each guard did to each text, then precision, recall, F1 and latency per guard
(keel/guardrails/evaluate.py says how labels are read). `--save` stores the run as an eval run
in the store of CONFIG when it is a keel.yaml (else the default one, or `--db`), so two
settings compare with `keel eval compare RUN_A RUN_B`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import yaml
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option

_ACTION_STYLE = {"pass": "green", "flag": "yellow", "error": "bold red"}


@click.group("guard")
def guard_group() -> None:
    """Test and tune guardrails on labelled texts."""


def _overrides(ctx, param, values) -> dict:
    found = {}
    for value in values:
        key, sep, raw = value.partition("=")
        guard, dot, option = key.strip().partition(".")
        if not sep or not dot or not guard or not option:
            raise click.BadParameter(f"expected GUARD.OPTION=VALUE, got {value!r}")
        found[f"{guard}.{option}"] = yaml.safe_load(raw) if raw.strip() else None
    return found


@guard_group.command("test")
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@click.argument("data_path", metavar="FILE.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", help="The model of CONFIG whose guards to test (when several have).")
@click.option("--stage", type=click.Choice(["input", "output"]),
              help="Only the guards of this stage (default: both).")
@click.option("--guard", "only", multiple=True, metavar="NAME",
              help="Only this guard (repeatable).")
@click.option("--set", "overrides", multiple=True, callback=_overrides,
              metavar="GUARD.OPTION=VALUE", help="Change a guard's option for this run "
              "(a YAML value), e.g. prompt_injection.threshold=0.8. Repeatable.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(min=1),
              help="Guard checks running at once.")
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(min=0),
              help="Rows of the per-text table (0: none; --json has them all).")
@click.option("--save", is_flag=True, help="Store the run as an eval run.")
@click.option("--variant", help="The run's variant name (default: the model, or CONFIG's name).")
@click.option("--db", "db_url", metavar="URL", help="Database for --save; overrides CONFIG's.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
def test_command(config_path, data_path, model, stage, only, overrides, concurrency, limit,
                 save, variant, db_url, no_progress, as_json) -> None:
    """Run CONFIG's guards over every text of FILE.jsonl and score them against the labels.

    Each line is {"text": ..., "label": ...}; the label is true (some guard should act), false
    (none should), a guard's name or a list of names (those should act), or left out."""
    from keel.guardrails import evaluate as ev

    config, model = ev.guard_config(config_path, model)
    if overrides:
        config = ev.apply_overrides(config, overrides)
    examples = ev.load_examples(data_path)
    gateway_config = config_path if ev.is_gateway_config(config_path) else None
    records, names, metrics = asyncio.run(_run(
        config, examples, gateway_config, model, stage, tuple(only), concurrency,
        progress=not (no_progress or as_json)))
    run_id = None
    if save:
        variant = variant or model or Path(config_path).stem
        audit = ev.describe(config, config_path=str(config_path), model=model, stage=stage,
                            only=tuple(only), overrides=overrides, examples=examples)
        store = common.open_store_for(gateway_config, db_url, must_exist=False)
        try:
            run_id = ev.save_run(store, suite=f"guards:{Path(data_path).stem}",
                                 dataset_name=Path(data_path).stem, source=str(data_path),
                                 variant=variant, examples=examples, records=records,
                                 metrics=metrics, audit=audit)
        finally:
            store.close()
    if as_json:
        click.echo(common.dumps({
            "run_id": run_id, "guards": names, "metrics": metrics,
            "texts": [{"id": e.id, "text": e.text, "label": _label(e.label),
                       "guards": {n: ev._outcome_dict(o) for n, o in r.items()}}
                      for e, r in zip(examples, records)]}))
        return
    console = common.console()
    if limit:
        console.print(texts_table(examples[:limit], records[:limit], names))
        if len(examples) > limit:
            console.print(Text(f"… {len(examples) - limit} more texts (--limit, or --json)",
                               style="dim"))
    console.print(metrics_table(metrics))
    if not any(m["labelled"] for m in metrics.values()):
        console.print(Text("no labels: add \"label\" to the lines to get precision and recall",
                           style="yellow"))
    if run_id:
        console.print(Text(f"saved as eval run {run_id} (compare runs with "
                           f"`keel eval compare RUN_A RUN_B`)", style="bold"))


async def _run(config, examples, gateway_config, model, stage, only, concurrency, progress):
    """Run the guards with the runtime (store, embedders) of CONFIG when it is a keel.yaml, and
    the model's route, so guards that ask the model (rewrite, judges) work as in the gateway."""
    from keel.config import load_config
    from keel.evals.runner import _progress
    from keel.gateway import Gateway
    from keel.guardrails import evaluate as ev

    gateway = Gateway(load_config(gateway_config))
    route = gateway.route(model) if model else None
    runtime = gateway.runtime
    try:
        if route is not None:
            await route.provider.start()
        guards = await ev.build_guards(config, runtime, stage, only)
        try:
            bar = _progress(progress and len(examples) > 1)
            with bar:
                task = bar.add_task("guards", total=len(examples))
                records = await ev.run_guards(guards, examples, runtime=runtime, route=route,
                                              concurrency=concurrency,
                                              advance=lambda: bar.advance(task))
        finally:
            await ev.close_guards(guards)
    finally:
        if route is not None:
            await route.provider.aclose()
        await runtime.aclose()
    names = [g.name for g in guards]
    return records, names, ev.score(records, examples, names)


def _label(label):
    return list(label) if isinstance(label, tuple) else label


def texts_table(examples, records, names) -> Table:
    """A row per text: its label, then each guard's action with its reasons and scores."""
    table = Table(box=None, header_style="bold", pad_edge=False, show_lines=False)
    table.add_column("id", no_wrap=True)
    table.add_column("text", overflow="fold", max_width=48)
    table.add_column("label", overflow="fold", max_width=16)
    for name in names:
        table.add_column(name, overflow="fold", max_width=36)
    for example, record in zip(examples, records):
        label = example.label
        shown = "-" if label is None else (str(label).lower() if isinstance(label, bool)
                                           else ", ".join(label))
        table.add_row(example.id, _short(example.text, 120), shown,
                      *(_outcome_cell(record[n], example.expects(n)) for n in names))
    return table


def _outcome_cell(outcome, expected) -> Text:
    style = _ACTION_STYLE.get(outcome.action, "bold magenta")
    text = Text(outcome.action, style=style)
    if expected is not None and outcome.error is None and outcome.acted != expected:
        text.append(" ✗", style="bold red")  # disagrees with the label
    detail = outcome.error or "; ".join(outcome.reasons)
    if outcome.scores:
        detail += (" " if detail else "") + " ".join(
            f"{k}={v:.2f}" for k, v in list(outcome.scores.items())[:4])
    if detail:
        text.append(f" {_short(detail, 100)}", style="dim")
    if outcome.text:
        text.append(f" → {_short(outcome.text, 100)}")
    return text


def metrics_table(metrics: dict) -> Table:
    from keel.evals.report import fmt

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("guard", "texts", "acted", "errors", "labelled", "tp", "fp", "fn", "tn",
                   "precision", "recall", "F1", "p50 ms", "p95 ms"):
        table.add_column(column, justify="left" if column == "guard" else "right",
                         no_wrap=True)
    for name, m in metrics.items():
        table.add_row(Text(name, style="bold" if name == "any guard" else ""), str(m["texts"]),
                      str(m["acted"]), str(m["errors"]), str(m["labelled"]), str(m["tp"]),
                      str(m["fp"]), str(m["fn"]), str(m["tn"]), fmt(m["precision"]),
                      fmt(m["recall"]), fmt(m["f1"]), fmt(m["p50_ms"], 2), fmt(m["p95_ms"], 2))
    return table


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
