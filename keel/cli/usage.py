"""`keel usage`: spend, tokens and requests by key, team, model and day, from `usage_daily`.

Reads the store named by keel.yaml (`--config`) or `--db`; a table for people, `--json` for
scripts. The figures are what the trace writer has written so far (a fraction of a second
behind the requests).
"""

from __future__ import annotations

import click
from rich.table import Table

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.errors import InvalidRequest

_HEADINGS = {"day": "day", "key": "key", "team": "team", "model": "model"}


@click.command()
@click.option("--since", default="30d", show_default=True, metavar="AGE",
              help="From the UTC day this long ago, e.g. 1d, 7d, 30d.")
@click.option("--by", "by", default="key,model,day", show_default=True, metavar="DIMS",
              help="Group by any of key, team, model, day (comma-separated).")
@click.option("--key", "key_id", metavar="ID", help="Only this key's usage (its id, key_...).")
@store_options
@json_option
def usage(since, by, key_id, config_path, db_url, as_json) -> None:
    """Spend and tokens per key, model and day (or as --by groups them)."""
    from keel.ops.usage import DIMENSIONS, usage_report

    dims = tuple(d.strip() for d in by.split(",") if d.strip())
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or not dims:
        raise InvalidRequest(f"--by: expected any of {', '.join(DIMENSIONS)}, got {by!r}")
    store = common.open_store_for(config_path, db_url)
    try:
        rows = usage_report(store, since=common.since(since), by=dims, key_id=key_id)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
    elif not rows:
        click.echo("no usage recorded")
    else:
        common.console().print(_table(rows, dims))


def _table(rows: list[dict], dims: tuple[str, ...]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, show_footer=True)
    totals = {name: sum(row[name] for row in rows) for name in
              ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")}
    for i, dim in enumerate(dims):
        table.add_column(_HEADINGS[dim], no_wrap=True, footer="total" if i == 0 else "")
    for name, heading in [("requests", "requests"), ("errors", "errors"),
                          ("prompt_tokens", "tokens in"), ("completion_tokens", "tokens out")]:
        table.add_column(heading, justify="right", footer=f"{totals[name]:,}")
    table.add_column("cost US$", justify="right", footer=_dollars(totals["cost_usd"]))
    for row in rows:
        table.add_row(
            *[_label(row, dim) for dim in dims],
            f"{row['requests']:,}", f"{row['errors']:,}", f"{row['prompt_tokens']:,}",
            f"{row['completion_tokens']:,}", _dollars(row["cost_usd"]),
        )
    return table


def _dollars(amount: float) -> str:
    # Cents hide what small models cost: $0.15 per million tokens is $0.00000015 a token.
    return f"{amount:,.2f}" if amount >= 100 else f"{amount:.6f}"


def _label(row: dict, dim: str) -> str:
    value = row[dim]
    if dim == "key":
        if not value:
            return "(no key)"
        return f"{row['key_name']} ({value})" if row.get("key_name") else value
    if dim == "team":
        return value or "(no team)"
    return value or "-"
