"""`keel traces list` and `keel traces show ID`: read back what the gateway recorded.

Both read the store named by keel.yaml (`--config`, default settings without one) or by `--db`,
print a table for people, and `--json` for scripts.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import click
import orjson
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from keel.errors import ConfigError, InvalidRequest

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _db_options(fn):
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(fn)
    fn = click.option(
        "--db", "db_url", metavar="URL", help="Database URL; overrides the config."
    )(fn)
    fn = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), metavar="PATH",
        help="keel.yaml whose store to read (default: ./.keel/keel.db).",
    )(fn)
    return fn


@click.group()
def traces() -> None:
    """Inspect recorded requests."""


@traces.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--model", help="Only this public model name.")
@click.option("--status", help="An HTTP status (200, 429), or 'ok' / 'error'.")
@click.option("--since", metavar="AGE", help="Only traces newer than this, e.g. 30s, 10m, 2h, 1d.")
@_db_options
def list_command(limit, model, status, since, config_path, db_url, as_json) -> None:
    """The newest traces first."""
    from keel.ops.trace_queries import list_traces

    store = _open_store(config_path, db_url)
    try:
        rows = list_traces(store, limit=limit, model=model, status=status,
                           since=_since(since) if since else None)
    finally:
        store.close()
    if as_json:
        click.echo(_dumps(rows))
    elif not rows:
        click.echo("no traces")
    else:
        _console().print(_list_table(rows))


@traces.command("show")
@click.argument("trace_id", metavar="ID")
@_db_options
def show_command(trace_id, config_path, db_url, as_json) -> None:
    """One trace in full: summary, span timeline, request and response (ID may be a prefix)."""
    from keel.ops.trace_queries import get_trace

    store = _open_store(config_path, db_url)
    try:
        trace = get_trace(store, trace_id)
    finally:
        store.close()
    if as_json:
        click.echo(_dumps(trace))
    else:
        _print_trace(_console(), trace)


# -- opening the store -----------------------------------------------------------------------


def _open_store(config_path: str | None, db_url: str | None):
    from keel.config import load_config
    from keel.store import open_store
    from keel.store.db import sqlite_path

    url = db_url or load_config(config_path).database_url()
    path = sqlite_path(url)
    if path is not None and not path.exists():
        # Reading should not leave an empty database behind in whatever folder we run in.
        raise ConfigError(
            f"no trace database at {path} (run `keel serve` first, or pass --config / --db)"
        )
    return open_store(url)


def _console() -> Console:
    console = Console()
    # Piped into grep or a file, rich would assume 80 columns and cut ids short.
    return console if console.is_terminal else Console(width=400)


def _since(age: str) -> float:
    match = _DURATION.fullmatch(age.strip().lower())
    if not match:
        raise InvalidRequest(f"--since: expected an age like 30s, 10m, 2h or 1d, got {age!r}")
    return time.time() - float(match.group(1)) * _SECONDS[match.group(2)]


def _dumps(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


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
            _time(row["created_at"]),
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
        ("time", _time(trace["created_at"])),
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


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


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
