"""`keel traces list`, `show ID` and `prune`: read back what the gateway recorded, and trim it.

All read the store named by keel.yaml (`--config`, default settings without one) or by `--db`,
print a table (or a line) for people, and `--json` for scripts.
"""

from __future__ import annotations

import time

import click
import orjson
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.errors import InvalidRequest


@click.group()
def traces() -> None:
    """Inspect recorded requests."""


@traces.command("list")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--model", help="Only this public model name.")
@click.option("--status", help="An HTTP status (200, 429), or 'ok' / 'error'.")
@click.option("--since", metavar="AGE", help="Only traces newer than this, e.g. 30s, 10m, 2h, 1d.")
@click.option("--until", metavar="AGE", help="Only traces older than this, e.g. 1h, 7d.")
@click.option("--key", "key_id", metavar="ID", help="Only requests made with this key (key_…).")
@click.option("--user", metavar="USER", help="Only requests whose `user` field is this.")
@click.option("--session", "session_id", metavar="ID",
              help="Only requests of this session (x-keel-session-id).")
@store_options
@json_option
def list_command(limit, model, status, since, until, key_id, user, session_id, config_path,
                 db_url, as_json) -> None:
    """The newest traces first."""
    from keel.ops.trace_queries import list_traces

    since_at = _ago(since, "--since") if since else None
    until_at = _ago(until, "--until") if until else None
    store = _open_store(config_path, db_url)
    try:
        rows = list_traces(store, limit=limit, model=model, status=status, since=since_at,
                           until=until_at, key_id=key_id, user=user, session_id=session_id)
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


@traces.command("prune")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Delete traces older than this, e.g. 30d, 12h (default: "
                   "tracing.retention_days).")
@click.option("--keep", type=click.IntRange(min=0), metavar="N",
              help="Keep only the newest N traces (default: tracing.max_traces).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@store_options
@json_option
def prune_command(older_than, keep, dry_run, config_path, db_url, as_json) -> None:
    """Delete old traces; feedback, evals and usage totals are kept."""
    from keel.config import load_config
    from keel.ops.retention import DAY_S, prune

    tracing = load_config(config_path).tracing
    older_than_s = _seconds(older_than, "--older-than") if older_than else None
    if older_than_s is None and keep is None:
        if tracing.retention_days:
            older_than_s = tracing.retention_days * DAY_S
            older_than = f"{tracing.retention_days:g}d"
        keep = tracing.max_traces
    if older_than_s is None and keep is None:
        raise InvalidRequest(
            "nothing to prune by: pass --older-than AGE and/or --keep N, or set "
            "tracing.retention_days / tracing.max_traces in keel.yaml (--config)")
    store = _open_store(config_path, db_url)
    try:
        count = prune(store, older_than_s=older_than_s, keep=keep, dry_run=dry_run)
    finally:
        store.close()
    if as_json:
        click.echo(common.dumps({"deleted": 0 if dry_run else count,
                                 "would_delete": count if dry_run else None,
                                 "dry_run": dry_run}))
        return
    policy = " or ".join(
        ([f"older than {older_than.strip()}"] if older_than_s is not None else [])
        + ([f"beyond the newest {keep}"] if keep is not None else []))
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {count} trace{'' if count == 1 else 's'} ({policy})")


# -- options ---------------------------------------------------------------------------------


def _ago(age: str, option: str) -> float:
    """Epoch seconds `age` ago, a bad age's error naming the option it came with."""
    try:
        return common.since(age)
    except InvalidRequest:
        raise InvalidRequest(
            f"{option}: expected an age like 30s, 10m, 2h or 1d, got {age!r}") from None


def _seconds(age: str, option: str) -> float:
    return time.time() - _ago(age, option)


# -- opening the store -----------------------------------------------------------------------


def _open_store(config_path: str | None, db_url: str | None):
    return common.open_store_for(config_path, db_url)


# -- rendering -------------------------------------------------------------------------------


# Who asked: shown in the list only when some trace on it has one, so a deployment without
# keys or sessions keeps the table it had.
_WHO_COLUMNS = [("key_id", "key"), ("end_user", "user"), ("session_id", "session")]


def _list_table(rows: list[dict]) -> Table:
    who = [(field, label) for field, label in _WHO_COLUMNS if any(r.get(field) for r in rows)]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in [
        ("id", "left"), ("time", "left"),
        *[(label, "left") for _, label in who],
        ("model", "left"), ("provider → upstream", "left"),
        ("status", "right"), ("latency ms", "right"), ("ttft ms", "right"),
        ("tokens in/out", "right"), ("fingerprint", "left"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(
            row["id"],
            common.when(row["created_at"]),
            *[row.get(field) or "-" for field, _ in who],
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
        ("cost", _cost(trace.get("cost_usd"))),
        ("key", trace.get("key_id") or "-"),
        ("key metadata", _labels(trace.get("key_metadata"))),
        ("user", trace.get("end_user") or "-"),
        ("session", trace.get("session_id") or "-"),
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


def _cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def _labels(metadata: dict | None) -> str:
    if not metadata:
        return "-"
    return " ".join(f"{k}={_short(v)}" for k, v in metadata.items())


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _short(value, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
