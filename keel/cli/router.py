"""`keel router`: train a learned cost-aware router from eval runs, and evaluate one.

    keel router train SUITE_OR_RUNS... --strong VARIANT --cheap VARIANT [--out router.npz]
                      [--grader NAME] [--margin 0] [--threshold 0.5] [--holdout 0.3]
    keel router evaluate router.npz SUITE_OR_RUNS... [--strong V] [--cheap V] [--json]

SUITE_OR_RUNS are run ids (or unique prefixes), suite names or suite files (a suite stands for
all its finished runs), in the store of `--config` / `--db`. Evaluation uses only the samples
of the model's held-out split it was not trained on.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from keel.cli import common
from keel.cli.common import json_option, store_options


@click.group("router")
def router_group() -> None:
    """Learned cost-aware routing between a strong and a cheap model."""


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if pct else f"{value:.3f}"


@router_group.command("train")
@click.argument("sources", nargs=-1, required=True, metavar="SUITE_OR_RUNS...")
@click.option("--strong", required=True, metavar="VARIANT", help="The strong model's variant.")
@click.option("--cheap", required=True, metavar="VARIANT", help="The cheap model's variant.")
@click.option("--out", "out_path", default="router.npz", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the model file.")
@click.option("--grader", help="Score by this grader only (default: the mean of all).")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="The cheap answer is good enough when its score >= strong's - margin.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Default threshold stored in the file (route cheap when P >= it).")
@click.option("--holdout", type=click.FloatRange(0.05, 0.9), default=0.3, show_default=True,
              help="Share of samples (by a hash of their id) kept out of training.")
@click.option("--l2", type=float, default=1.0, show_default=True, help="L2 regularisation.")
@store_options
@json_option
def train_command(sources, strong, cheap, out_path, grader, margin, threshold, holdout, l2,
                  config_path, db_url, as_json) -> None:
    """Train a router on eval runs where both variants answered and were graded."""
    from keel.orchestration.router import learned

    store = common.open_store_for(config_path, db_url)
    try:
        run_ids = learned.resolve_runs(store, list(sources))
        examples = learned.examples_from_runs(store, run_ids, strong, cheap, grader)
    finally:
        store.close()
    model = learned.train(examples, margin=margin, l2=l2, threshold=threshold, holdout=holdout,
                          metadata={"strong": strong, "cheap": cheap, "grader": grader,
                                    "runs": run_ids, "samples": len(examples)})
    path = model.save(out_path)
    info = {"model_file": str(path), "runs": run_ids, "samples": len(examples),
            "trained_on": model.metadata["train_samples"],
            "held_out": len(learned.held_out(model, examples)),
            "cheap_good_share": round(model.metadata["train_positive_share"], 4),
            "fingerprint": model.fingerprint, "threshold": model.threshold}
    if as_json:
        click.echo(common.dumps(info))
        return
    click.echo(f"trained on {info['trained_on']} of {info['samples']} samples from "
               f"{len(run_ids)} run(s) ({info['held_out']} held out); the cheap answer was good "
               f"enough on {info['cheap_good_share']:.0%} of them")
    click.echo(f"wrote {path} (threshold {model.threshold}, embedder {model.fingerprint}); "
               f"evaluate it: keel router evaluate {path} {' '.join(sources)}")


@router_group.command("evaluate")
@click.argument("model_path", metavar="ROUTER.npz", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True, metavar="SUITE_OR_RUNS...")
@click.option("--strong", metavar="VARIANT", help="Default: the variant it was trained with.")
@click.option("--cheap", metavar="VARIANT", help="Default: the variant it was trained with.")
@click.option("--grader", help="Default: the grader it was trained with.")
@store_options
@json_option
def evaluate_command(model_path, sources, strong, cheap, grader, config_path, db_url,
                     as_json) -> None:
    """Print the cost/quality curve on held-out samples, APGR and CPT(50/80/95%)."""
    from keel.orchestration.router import learned

    model = learned.RouterModel.load(model_path)
    meta = model.metadata
    strong = strong or meta.get("strong")
    cheap = cheap or meta.get("cheap")
    grader = grader or meta.get("grader")
    if not strong or not cheap:
        raise click.UsageError("name the variants with --strong and --cheap")
    store = common.open_store_for(config_path, db_url)
    try:
        run_ids = learned.resolve_runs(store, list(sources))
        examples = learned.examples_from_runs(store, run_ids, strong, cheap, grader)
    finally:
        store.close()
    report = learned.evaluate(model, examples)
    if as_json:
        click.echo(common.dumps({k: v for k, v in report.items() if k != "points"}))
        return
    out = common.console()
    table = Table(title=f"{Path(model_path).name}: {report['samples']} held-out samples "
                        f"(strong {strong!r}, cheap {cheap!r})")
    for name in ("strong calls", "threshold", "quality", "PGR", "random quality"):
        table.add_column(name, justify="right")
    for row in report["curve"]:
        table.add_row(_fmt(row["strong_share"], True), _fmt(row["threshold"]),
                      _fmt(row["quality"]), _fmt(row["pgr"]), _fmt(row["random_quality"]))
    out.print(table)
    lr, orc = report["learned"], report["oracle"]
    out.print(f"quality: strong {lr['strong_quality']:.3f}, cheap {lr['cheap_quality']:.3f}")
    for name, part in (("learned", lr), ("random", report["random"]), ("oracle", orc)):
        cpt = "  ".join(f"CPT({k})={_fmt(v, True)}" for k, v in part["cpt"].items())
        out.print(f"{name:8} APGR {part['apgr']:.3f}  {cpt}")
    d = report["default_threshold"]
    out.print(f"at the file's threshold {d['threshold']}: {d['strong_share']:.0%} strong calls, "
              f"quality {d['quality']:.3f}")
    if report["excluded_trained"]:
        out.print(f"({report['excluded_trained']} samples skipped: trained on, or outside the "
                  "held-out split)")
