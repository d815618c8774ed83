"""`keel eval dataset`: import, list, show and version eval datasets, or build one from traces.

Every command uses the store named by keel.yaml (`--config`; default ./.keel/keel.db) or by
`--db`, prints tables for people and `--json` for scripts.
"""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, open_store_for, store_options
from keel.messages import content_text


@click.group("dataset")
def dataset() -> None:
    """Eval datasets in the store: each content is a version, named by its hash."""


@dataset.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Dataset name to store it under.")
@click.option("--input-field", default="input", show_default=True, help="JSONL field of input.")
@click.option("--ideal-field", default="ideal", show_default=True, help="JSONL field of ideal.")
@store_options
@json_option
def import_command(file, name, input_field, ideal_field, config_path, db_url, as_json) -> None:
    """Import a JSONL or CSV file as a version of dataset NAME."""
    from keel.evals.dataset_store import import_dataset
    from keel.evals.datasets import load_samples

    samples = load_samples(file, input_field=input_field, ideal_field=ideal_field)
    store = open_store_for(config_path, db_url, must_exist=False)
    try:
        name, version, created = import_dataset(store, name, samples, source=str(file))
    finally:
        store.close()
    _report(name, version, len(samples), created, as_json)


@dataset.command("list")
@store_options
@json_option
def list_command(config_path, db_url, as_json) -> None:
    """The datasets: latest version, samples, number of versions."""
    from keel.evals.dataset_store import list_datasets

    store = open_store_for(config_path, db_url)
    try:
        rows = list_datasets(store)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
    elif not rows:
        click.echo("no datasets")
    else:
        table = _table(["name", "latest", "samples", "versions", "created", "source"])
        for row in rows:
            table.add_row(row["name"], row["version"], str(row["sample_count"]),
                          str(row["versions"]), common.when(row["created_at"]), row["source"] or "-")
        common.console().print(table)


@dataset.command("versions")
@click.argument("name")
@store_options
@json_option
def versions_command(name, config_path, db_url, as_json) -> None:
    """Every version of dataset NAME, newest first."""
    from keel.evals.dataset_store import dataset_versions

    store = open_store_for(config_path, db_url)
    try:
        rows = dataset_versions(store, name)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
        return
    table = _table(["version", "samples", "created", "source"])
    for row in rows:
        table.add_row(row["version"], str(row["sample_count"]), common.when(row["created_at"]),
                      row["source"] or "-")
    common.console().print(table)


@dataset.command("show")
@click.argument("name")
@click.option("--version", "version", metavar="V", help="A version or its prefix (default: latest).")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@store_options
@json_option
def show_command(name, version, limit, config_path, db_url, as_json) -> None:
    """The samples of a dataset version."""
    from keel.evals.dataset_store import get_dataset

    store = open_store_for(config_path, db_url)
    try:
        meta, samples = get_dataset(store, name, version)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps({**meta, "samples": [s.to_dict() for s in samples[:limit]]}))
        return
    console = common.console()
    console.print(Text(f"{meta['name']} {meta['version']}  {meta['sample_count']} samples  "
                       f"from {meta['source'] or '-'}", style="bold"))
    table = Table(header_style="bold", show_lines=True)
    for column in ("id", "input", "ideal"):
        table.add_column(column, overflow="fold", ratio=1 if column != "input" else 3)
    for sample in samples[:limit]:
        table.add_row(sample.id, _messages(sample.input), _ideal(sample.ideal))
    console.print(table)
    if len(samples) > limit:
        console.print(Text(f"… {len(samples) - limit} more (--limit)", style="dim"))


@dataset.command("from-traces")
@click.argument("name")
@click.option("--feedback", type=click.Choice(["down", "up", "any"]),
              help="Only traces whose latest feedback is down (-1, 2), up (1, 4, 5), or any.")
@click.option("--min-score", type=float, help="Only traces whose latest feedback score is ≥ this.")
@click.option("--max-score", type=float, help="Only traces whose latest feedback score is ≤ this.")
@click.option("--model", help="Only this public model name.")
@click.option("--since", metavar="AGE", help="Only traces newer than this, e.g. 2h, 7d.")
@click.option("--limit", "-n", default=1000, show_default=True, type=click.IntRange(min=1))
@store_options
@json_option
def from_traces_command(name, feedback, min_score, max_score, model, since, limit, config_path,
                        db_url, as_json) -> None:
    """Store production traces as a new version of dataset NAME (corrections become ideal)."""
    from keel.errors import InvalidRequest
    from keel.evals.dataset_store import import_dataset
    from keel.evals.datasets import sample_from_trace
    from keel.ops.feedback import traces_for_dataset

    store = open_store_for(config_path, db_url)
    try:
        traces = traces_for_dataset(
            store, feedback=feedback, model=model, since=common.since(since) if since else None,
            min_score=min_score, max_score=max_score, limit=limit,
        )
        if not traces:
            raise InvalidRequest("no traces match the filter (traces need recorded request "
                                 "bodies: tracing.record_bodies)")
        samples = [sample_from_trace(trace) for trace in traces]
        name, version, created = import_dataset(store, name, samples,
                                                source=_filter_text(feedback=feedback, min_score=min_score,
                                                                   max_score=max_score, model=model,
                                                                   since=since))
    finally:
        store.close()
    _report(name, version, len(samples), created, as_json)


def _filter_text(**filters) -> str:
    parts = [f"{key}={value}" for key, value in filters.items() if value is not None]
    return "traces " + (" ".join(parts) or "(all)")


def _report(name: str, version: str, count: int, created: bool, as_json: bool) -> None:
    if as_json:
        click.echo(common.dumps({"name": name, "version": version, "samples": count,
                           "created": created}))
        return
    state = "stored" if created else "unchanged (this content is already stored)"
    click.echo(f"{name} {version}: {count} samples, {state}")


def _table(columns: list[str]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column != "source")
    return table


def _messages(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role')}: {content_text(m.get('content'))}" for m in messages)




def _ideal(ideal) -> str:
    if ideal is None:
        return "-"
    return ideal if isinstance(ideal, str) else "\n".join(f"• {i}" for i in ideal)
