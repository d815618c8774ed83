"""`keel cache clear | stats`: the answer cache's entries in the store.

They act on the store named by keel.yaml (`--config`) or `--db`, the one `keel serve` uses. A
cleared entry is never served again, by any process: every hit is read back from the store
before it is served (docs/cache.md).
"""

from __future__ import annotations

import time

import click
from rich.table import Table

from keel.cli import common
from keel.cli.common import json_option, store_options


@click.group("cache")
def cache_group() -> None:
    """Inspect and clear the answer cache (exact and semantic)."""


@cache_group.command("clear")
@click.option("--model", metavar="NAME", help="Only this public model's entries.")
@click.option("--namespace", metavar="HASH",
              help="Only this namespace's entries (`keel cache stats --namespaces` lists them).")
@store_options
@json_option
def clear(model, namespace, config_path, db_url, as_json) -> None:
    """Delete cache entries: all of them, or a model's, or a namespace's."""
    from keel.orchestration.cache.store import clear as clear_entries

    store = common.open_store_for(config_path, db_url)
    try:
        deleted = clear_entries(store, model=model, namespace=namespace)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps({"deleted": deleted, "model": model, "namespace": namespace}))
    else:
        click.echo(f"deleted {deleted} cache entr{'y' if deleted == 1 else 'ies'}")


@cache_group.command("stats")
@click.option("--namespaces", "show_namespaces", is_flag=True,
              help="Also list the largest namespaces (to clear one).")
@click.option("--model", metavar="NAME", help="With --namespaces: only this model's.")
@store_options
@json_option
def stats(show_namespaces, model, config_path, db_url, as_json) -> None:
    """Entries per model: live, expired (not yet deleted), semantic, namespaces, hits."""
    from keel.orchestration.cache import store as cache_store

    store = common.open_store_for(config_path, db_url)
    try:
        rows = cache_store.stats(store)
        spaces = cache_store.namespaces(store, model) if show_namespaces else None
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps({"models": rows, "namespaces": spaces} if show_namespaces
                                else rows))
        return
    if not rows:
        click.echo("the cache is empty")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for heading in ("model", "entries", "live", "expired", "semantic", "namespaces", "hits",
                    "newest"):
        table.add_column(heading, justify="left" if heading == "model" else "right")
    for row in rows:
        table.add_row(row["model"], *(f"{row[k]:,}" for k in
                                      ("entries", "live", "expired", "semantic", "namespaces",
                                       "hits")), _age(row["newest"]))
    common.console().print(table)
    if spaces:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for heading in ("model", "namespace", "entries", "hits"):
            table.add_column(heading, no_wrap=True)
        for row in spaces:
            table.add_row(row["model"], row["namespace"], f"{row['entries']:,}",
                          f"{row['hits']:,}")
        common.console().print()
        common.console().print(table)


def _age(when: float | None) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
