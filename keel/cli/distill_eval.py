"""`keel distill evaluate`, `keel distill promote` and `keel distill judge` (docs/distill.md).

evaluate runs teacher, base student and trained student through one eval run and prints the
quality retained, the cost saved per 1,000 requests and the latencies; promote puts a student on
a route (shadow, canary or the learned router's cheap group) and records which eval run approved
it; judge builds the training set of a cheap judge from a strong judge's grades and people's.
"""

from __future__ import annotations

import asyncio

import click
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options


@click.command("evaluate")
@click.argument("job", required=False, metavar="[JOB]")
@click.option("--teacher", metavar="MODEL", help="The teacher's Keel model (default: the "
              "training set's source).")
@click.option("--base", metavar="MODEL", help="The base student (default: the job's base model).")
@click.option("--student", metavar="MODEL", help="The trained student: a Keel model, or a GGUF "
              "path (default: the job's result).")
@click.option("--set", "set_ref", metavar="SET", help="Training set whose held-out split is used "
              "(default: the job's).")
@click.option("--split", default="test", show_default=True, help="Which split to evaluate on.")
@click.option("--suite", "suite_path", type=click.Path(exists=True, dir_okay=False),
              help="A suite file: its dataset, graders, judge and first variant's prompt.")
@click.option("--grader", "graders", multiple=True, metavar="KIND[:k=v,...]",
              help="A grader for the generated suite, e.g. fact or includes. Repeatable.")
@click.option("--judge", metavar="MODEL", help="The judge model of model-graded graders.")
@click.option("--max-samples", type=click.IntRange(min=1), help="Only the first N samples.")
@click.option("--no-progress", is_flag=True)
@store_options
@json_option
def evaluate_command(job, teacher, base, student, set_ref, split, suite_path, graders, judge,
                     max_samples, no_progress, config_path, db_url, as_json) -> None:
    """Teacher, base student and trained student on the held-out split, in one eval run:
    quality retained (with 95% intervals), cost saved per 1,000 requests, p50 latency."""
    from keel.config import load_config
    from keel.distill import evaluate as ev
    from keel.store import open_store

    config = load_config(config_path)
    store = open_store(db_url or config.database_url())
    try:
        plan = ev.plan_for(store, job=job, teacher=teacher, base=base, student=student,
                           set_ref=set_ref, split=split, own_dataset=suite_path is not None)
        config = ev.with_student(config, plan)
        suite = ev.build_suite(plan, suite_path=suite_path,
                               graders=[ev.parse_grader(g) for g in graders], judge=judge,
                               max_samples=max_samples)
        report = asyncio.run(ev.evaluate(store, config, plan, suite,
                                         progress=not (no_progress or as_json),
                                         config_path=config_path))
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(report.to_dict()))
        return
    print_report(report)


def print_report(report) -> None:
    console = common.console()
    console.print(Text(f"eval run {report.run_id}   (keel eval compare {report.run_id}:teacher "
                       f"{report.run_id}:student)", style="bold"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("grader", "n", "teacher [95% CI]", "base [95% CI]", "student [95% CI]",
                 "retained [95% CI]", "student − teacher [95% CI]"):
        table.add_column(name, justify="left" if name == "grader" else "right", no_wrap=True)
    for grader, g in report.graders.items():
        base = g["base"] or {}
        table.add_row(grader, str(g["n"]), _ci(g["teacher"]["mean"], g["teacher"]["ci"]),
                      _ci(base.get("mean"), base.get("ci")),
                      _ci(g["student"]["mean"], g["student"]["ci"]),
                      _ci(g["retained"], g["retained_ci"], pct=True),
                      _ci(g["student_minus_teacher"]["diff"], g["student_minus_teacher"]["ci"],
                          signed=True))
    console.print(table)
    costs = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("variant", "model", "$ / 1k requests", "p50 latency ms", "errors"):
        costs.add_column(name, justify="left" if name in ("variant", "model") else "right")
    for variant, v in report.variants.items():
        costs.add_row(variant, v["model"], _money(v["cost_per_1k"]),
                      "-" if v["latency_p50_ms"] is None else f"{v['latency_p50_ms']:.1f}",
                      f"{v['errors']}/{v['cells']}")
    console.print(costs)
    if report.cost_saved_per_1k is not None:
        console.print(f"cost saved per 1,000 requests: {_money(report.cost_saved_per_1k)}")


def _ci(value, ci, signed: bool = False, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        inner = f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
        return f"{value:.1%}{inner}"
    sign = "+" if signed else ""
    inner = f" [{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]" if ci else ""
    return f"{value:{sign}.3f}{inner}"


def _money(value) -> str:
    return "-" if value is None else f"${value:.4f}"


@click.command("promote")
@click.argument("job_or_model", metavar="JOB_OR_MODEL")
@click.option("--route", required=True, metavar="R", help="The public model (keel.yaml models.R).")
@click.option("--mode", required=True, type=click.Choice(["shadow", "canary", "router"]))
@click.option("--share", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Shadow: share of requests copied to the student; canary: answered by it.")
@click.option("--seed", type=int, help="Fix which requests are sampled.")
@click.option("--judge", "judge", metavar="KIND[:k=v,...]", help="Shadow: the grader comparing "
              "the student's answer with the served one (default fuzzy_match; e.g. "
              "fact:model=gpt-4o).")
@click.option("--approved-by", metavar="RUN", help="The eval run that approved it (default: the "
              "job's latest `keel distill evaluate` run).")
@click.option("--name", metavar="MODEL", help="Keel model name for a GGUF student.")
@click.option("--write", "write_path", type=click.Path(dir_okay=False), metavar="KEEL_YAML",
              help="Also edit this keel.yaml (refused if it has comments; a .bak is kept).")
@store_options
@json_option
def promote_command(job_or_model, route, mode, share, seed, judge, approved_by, name,
                    write_path, config_path, db_url, as_json) -> None:
    """Put a student on route R: in shadow (judged against the served answers, into an eval
    run), as a canary share, or as the learned router's cheap group. Prints the keel.yaml
    change and records the promotion; keel reads keel.yaml at start, so restart to apply it."""
    from pathlib import Path

    from keel.config import default_config, load_config, read_yaml
    from keel.distill import promote as pr
    from keel.distill.evaluate import parse_grader
    from keel.store import open_store

    config = load_config(config_path)
    raw = read_yaml(config_path) if config_path and Path(config_path).exists() else (
        default_config().model_dump(mode="json", exclude_unset=True))
    store = open_store(db_url or config.database_url())
    try:
        out = pr.promote(store, config, job_or_model=job_or_model, route=route, mode=mode,
                         share=share, seed=seed, judge=parse_grader(judge) if judge else None,
                         approved_by=approved_by, name=name, raw_config=raw)
    finally:
        store.close()
    written = None
    if write_path:
        try:
            written = str(pr.write_config(write_path, out["snippet"]))
        except Exception:
            click.echo(out["yaml"], nl=False)
            raise
    out["written"] = written
    if as_json:
        click.echo(common.dumps(out))
        return
    console = common.console()
    console.print(Text(f"promotion {out['promotion']}: {out['student']} → {route} ({mode}"
                       + (f", share {share:g}" if mode != "router" else "") + ")", style="bold"))
    console.print(f"approved by eval run: {out['approved_by'] or '-'}")
    if out["shadow_run"]:
        console.print(f"shadow results go to eval run {out['shadow_run']} "
                      f"(keel eval show {out['shadow_run']})")
    if out.get("train"):
        console.print(f"train the router on the approving run first: {out['train']}")
    console.print(Text(f"\n# keel.yaml: add or replace (models.{route} whole)", style="dim"))
    click.echo(out["yaml"], nl=False)
    if written:
        console.print(f"wrote {written} (previous version in {written}.bak); restart keel to "
                      "apply it")


@click.group("judge")
def judge_group() -> None:
    """A cheap judge distilled from a strong judge's grades and people's (docs/distill.md)."""


@judge_group.command("dataset")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--grader", required=True, help="The model-graded grader whose judge is distilled.")
@click.option("--name", required=True, help="Name of the training set (and its datasets).")
@click.option("--no-humans", is_flag=True, help="Ignore the human annotations of the runs.")
@click.option("--pass-at", default=4, show_default=True, type=click.IntRange(1, 5))
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the train split as "
              "OpenAI chat fine-tuning JSONL.")
@store_options
@json_option
def judge_dataset_command(runs, grader, name, no_humans, pass_at, out, config_path, db_url,
                          as_json) -> None:
    """Judge prompts → the strong judge's verdicts (people's labels where they gave one), split
    and stored as a training set for `keel distill train`."""
    import orjson

    from keel.distill import judge as jd

    store = common.open_store_for(config_path, db_url)
    try:
        examples, stats = asyncio.run(jd.judge_examples(store, list(runs), grader,
                                                        humans=not no_humans, pass_at=pass_at))
        set_id, splits = jd.build_judge_set(store, name, examples, run_ids=list(runs),
                                            grader=grader, stats=stats)
    finally:
        store.close()
    if out:
        lines = [orjson.dumps(ex.chat()).decode() for ex in examples
                 if jd.split_of(ex.id) == "train"]
        with open(out, "w") as fh:
            fh.write("\n".join(lines) + ("\n" if lines else ""))
    report = {"set_id": set_id, "name": name, "splits": splits, "stats": stats.to_dict(),
              "out": out}
    if as_json:
        click.echo(common.dumps(report))
        return
    click.echo(f"training set {name} ({set_id}): " + ", ".join(
        f"{k} {v['count']} ({v['dataset']}@{v['version'][:8]})" for k, v in splits.items()))
    s = stats.to_dict()
    click.echo(f"{s['kept']} of {s['graded']} grades kept: {s['human_labels']} labelled by "
               f"people, {s['human_agreed']} confirmed by people, {s['dropped_disagreed']} "
               f"dropped (people disagreed), {s['dropped_problem']} failed grades left out")
    click.echo(f"next: keel distill train {name} ...; then keel distill judge grade RUN "
               f"--grader {grader} --judge MODEL --as {grader}-cheap")


@judge_group.command("grade")
@click.argument("run_id", metavar="RUN")
@click.option("--grader", required=True, help="The run's model-graded grader to redo.")
@click.option("--judge", "judge_model", required=True, metavar="MODEL",
              help="The cheap judge's Keel model.")
@click.option("--as", "as_name", required=True, metavar="NAME", help="Name of the new grades.")
@store_options
@json_option
def judge_grade_command(run_id, grader, judge_model, as_name, config_path, db_url,
                        as_json) -> None:
    """Grade a run's outputs again with the cheap judge, beside the strong judge's grades;
    then `keel eval calibrate RUN --judges GRADER NAME` compares both with people."""
    from keel.config import load_config
    from keel.distill import judge as jd
    from keel.store import open_store

    config = load_config(config_path)
    store = open_store(db_url or config.database_url())
    try:
        report = asyncio.run(jd.regrade(store, config, run_id, grader, judge_model=judge_model,
                                        as_name=as_name))
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(report))
        return
    labels = ", ".join(f"{k} {v}" for k, v in sorted(report["labels"].items()))
    click.echo(f"graded {report['graded']} outputs of run {report['run_id']} as {as_name} "
               f"({judge_model}): {labels}")
    click.echo(f"compare: keel eval calibrate {report['run_id']} --judges {grader} {as_name}")


COMMANDS: list = [evaluate_command, promote_command, judge_group]
