"""`keel ingest`, `keel search` and `keel collections`: the knowledge store from the shell.

All three use the store named by keel.yaml (`--config`; default settings without one) or by
`--db`, and the embedders that config defines (`minilm` always). Tables for people, `--json`
for scripts.
"""

from __future__ import annotations

import asyncio

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.errors import InvalidRequest


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--collection", "-c", required=True, help="Collection to ingest into.")
@click.option("--prune", is_flag=True, help="Remove documents whose files are gone from PATHs.")
@click.option("--embedder", help="Embedder for a new collection (default: minilm).")
@click.option("--text-field", default="text", show_default=True,
              help="The text field of JSONL records.")
@click.option("--rebuild", is_flag=True,
              help="Empty the collection and re-embed it (after an embedder change).")
@store_options
@json_option
def ingest(paths, collection, prune, embedder, text_field, rebuild, config_path, db_url,
           as_json) -> None:
    """Ingest files and folders (Markdown, text, HTML, PDF, JSONL) into a collection."""

    async def run(kb):
        if as_json:
            return await kb.ingest(collection, list(paths), prune=prune, embedder=embedder,
                                   text_field=text_field, rebuild=rebuild)
        with _progress_bar() as bar:
            task = bar.add_task(f"ingesting into {collection}", total=None)
            report = await kb.ingest(
                collection, list(paths), prune=prune, embedder=embedder, text_field=text_field,
                rebuild=rebuild,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        return report, await kb.version(collection)

    result = _run(config_path, db_url, run)
    if as_json:
        click.echo(common.dumps(result.to_dict()))
        return
    report, version = result
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("added", "updated", "unchanged", "removed", "chunks", "version"):
        table.add_column(name, justify="right" if name != "version" else "left")
    counts = report.to_dict()
    table.add_row(*(str(counts[n]) for n in ("added", "updated", "unchanged", "removed",
                                              "chunks")), version)
    common.console().print(table)


@click.command()
@click.argument("query")
@click.option("--collection", "-c", required=True, help="Collection to search.")
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--mode", type=click.Choice(["hybrid", "fulltext", "vector"]), default="hybrid",
              show_default=True)
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only chunks whose metadata KEY equals VALUE (repeatable).")
@store_options
@json_option
def search(query, collection, top_k, mode, filters, config_path, db_url, as_json) -> None:
    """Search a collection: ranked chunks with scores, sources and locations."""
    parsed = parse_filters(filters)

    async def run(kb):
        return await kb.search(collection, query, top_k=top_k, filters=parsed, mode=mode)

    hits = _run(config_path, db_url, run)
    if as_json:
        click.echo(common.dumps([hit.to_dict() for hit in hits]))
        return
    if not hits:
        click.echo("no results")
        return
    table = Table(header_style="bold", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("text", overflow="fold", ratio=3)
    for rank, hit in enumerate(hits, start=1):
        raw = " ".join(f"{name} {value:.3f}" for name, value in hit.scores.items())
        where = hit.source or hit.document_id
        if hit.location:
            where += f"\n{hit.location}"
        score = Text(f"{hit.score:.4f}\n") + Text(raw, style="dim")
        table.add_row(str(rank), score, Text(where), Text(_preview(hit.text)))
    common.console().print(table)


@click.command()
@store_options
@json_option
def collections(config_path, db_url, as_json) -> None:
    """The knowledge collections: documents, chunks, embedder and version."""

    async def run(kb):
        return await kb.collections()

    rows = _run(config_path, db_url, run)
    if as_json:
        click.echo(common.dumps(rows))
        return
    if not rows:
        click.echo("no collections")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in [("name", "left"), ("documents", "right"), ("chunks", "right"),
                          ("embedder", "left"), ("dim", "right"), ("version", "left")]:
        table.add_column(name, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(row["name"], str(row["documents"]), str(row["chunks"]), row["embedder"],
                      str(row["dim"]), row["version"])
    common.console().print(table)


def parse_filters(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs; a VALUE that reads as JSON (2024, true, 1.5) is taken as that."""
    filters = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--filter: expected KEY=VALUE, got {pair!r}")
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = value
        filters[key] = parsed if isinstance(parsed, (int, float, bool, str)) else value
    return filters


def _run(config_path, db_url, work):
    from keel.config import StoreConfig, load_config
    from keel.grounding.knowledge import knowledge_base
    from keel.pipeline.runtime import Runtime

    config = load_config(config_path)
    if db_url:
        config = config.model_copy(update={"store": StoreConfig(url=db_url)})

    async def main():
        runtime = Runtime(config)
        try:
            return await work(knowledge_base(runtime))
        finally:
            await runtime.aclose()

    return asyncio.run(main())


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("files"), TimeElapsedColumn(), console=Console(stderr=True),
        transient=False,
    )


def _preview(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
