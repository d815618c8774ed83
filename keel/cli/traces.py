"""`keel traces list` and `keel traces show ID`: read back what the gateway recorded.

Both read the store named by keel.yaml (`--config`, default settings without one) or by `--db`,
print a table for people, and `--json` for scripts.
"""

from __future__ import annotations

import click
import orjson
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options


@click.group()
def traces() -> None:
    """Inspect recorded requests."""


@traces.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--model", help="Only this public model name.")
@click.option("--status", help="An HTTP status (200, 429), or 'ok' / 'error'.")
@click.option("--since", metavar="AGE", help="Only traces newer than this, e.g. 30s, 10m, 2h, 1d.")
@store_options
@json_option
def list_command(limit, model, status, since, config_path, db_url, as_json) -> None:
    """The newest traces first."""
    from keel.ops.trace_queries import list_traces

    store = _open_store(config_path, db_url)
    try:
        rows = list_traces(store, limit=limit, model=model, status=status,
                           since=common.since(since) if since else None)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(rows))
    elif not rows:
        click.echo("no traces")
    else:
        common.console().print(_list_table(rows))


@traces.command("show")
@click.argument("trace_id", metavar="ID")
@store_options
@json_option
def show_command(trace_id, config_path, db_url, as_json) -> None:
    """One trace in full: summary, span timeline, request and response (ID may be a prefix)."""
    from keel.ops.trace_queries import get_trace

    store = _open_store(config_path, db_url)
    try:
        trace = get_trace(store, trace_id)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps(trace))
    else:
        _print_trace(common.console(), trace)


# -- opening the store -----------------------------------------------------------------------


def _open_store(config_path: str | None, db_url: str | None):
    return common.open_store_for(config_path, db_url)


# -- rendering -------------------------------------------------------------------------------


def _list_table(rows: list[dict]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in [
        ("id", "left"), ("time", "left"), ("model", "left"), ("provider → upstream", "left"),
        ("status", "right"), ("latency ms", "right"), ("ttft ms", "right"),
        ("tokens in/out", "right"), ("fingerprint", "left"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(
            row["id"],
            common.when(row["created_at"]),
            row["model"] or "-",
            _route(row),
            _status(row["status"]),
            _ms(row["latency_ms"]),
            _ms(row["ttft_ms"]),
            f"{_n(row['prompt_tokens'])}/{_n(row['completion_tokens'])}",
            row["system_fingerprint"] or "-",
        )
    return table


def _print_trace(console: Console, trace: dict) -> None:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for label, value in [
        ("id", trace["id"]),
        ("time", common.when(trace["created_at"])),
        ("endpoint", trace["endpoint"] + (" (stream)" if trace["stream"] else "")),
        ("model", trace["model"] or "-"),
        ("provider → upstream", _route(trace)),
        ("status", _status(trace["status"])),
        ("latency", f"{_ms(trace['latency_ms'])} ms"),
        ("time to first token", f"{_ms(trace['ttft_ms'])} ms"),
        ("tokens", f"{_n(trace['prompt_tokens'])} in, {_n(trace['completion_tokens'])} out, "
                   f"{_n(trace['total_tokens'])} total"),
        ("fingerprint", trace["system_fingerprint"] or "-"),
    ]:
        summary.add_row(label, value)
    console.print(summary)
    if trace.get("error"):
        console.print(Text("\nerror", style="bold red"))
        console.print(JSON.from_data(trace["error"]))
    console.print(Text("\nspans", style="bold"))
    console.print(_span_table(trace.get("spans") or []))
    for part in ("request", "response"):
        console.print(Text(f"\n{part}", style="bold"))
        body = trace.get(part)
        console.print(JSON.from_data(body) if body is not None else Text("(not recorded)", "dim"))


def _span_table(spans: list[dict]) -> Table:
    table = Table(box=None, header_style="dim", pad_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("start ms", justify="right")
    table.add_column("duration ms", justify="right")
    table.add_column("attributes", overflow="fold")
    for span in spans:
        attrs = span.get("attrs") or {}
        table.add_row(
            "  " * int(span.get("depth") or 0) + str(span.get("name")),
            _ms(span.get("start_ms")),
            _ms(span.get("duration_ms")),
            " ".join(f"{k}={_short(v)}" for k, v in attrs.items()),
        )
    if not spans:
        table.add_row(Text("(none)", "dim"), "", "", "")
    return table


def _route(row: dict) -> str:
    provider, upstream = row.get("provider"), row.get("upstream_model")
    if provider and upstream:
        return f"{provider} → {upstream}"
    return provider or upstream or "-"


def _status(status: int | None) -> Text:
    if status is None:
        return Text("-", style="dim")
    return Text(str(status), style="green" if status < 400 else "red")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
