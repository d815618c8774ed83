"""`keel keys create | list | show | revoke | rotate`: virtual keys in the store.

They act on the store named by keel.yaml (`--config`) or `--db`, the one `keel serve` uses, so a
running server sees a new key at once and a revoked one within `auth.refresh_interval_s`. A
secret is printed once, when the key is created or rotated; the store keeps only its hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from keel.cli import common
from keel.cli.common import json_option, store_options
from keel.errors import InvalidRequest
from keel.ops.principal import DEFAULT_SURFACES, SURFACES

if TYPE_CHECKING:
    from keel.ops.keys import KeyRecord

_STATUS_STYLE = {"active": "green", "revoked": "red", "expired": "yellow"}


@click.group()
def keys() -> None:
    """Create, list, revoke and rotate virtual API keys."""


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for, e.g. team-a or billing-app.")
@click.option("--models", metavar="A,B", help="Only these public model names (default: all).")
@click.option("--surfaces", metavar="A,B",
              help=f"What the key may use, of: {', '.join(SURFACES)} "
                   f"(default: {','.join(DEFAULT_SURFACES)}).")
@click.option("--budget-usd", type=float, metavar="USD", help="Spend allowed per period.")
# keel.ops.keys.PERIODS, spelled out: importing the store here would slow every `keel` command.
@click.option("--period", type=click.Choice(["day", "month"]),
              help="The budget's period (default: month).")
@click.option("--rpm", type=int, metavar="N", help="Requests per minute.")
@click.option("--tpm", type=int, metavar="N", help="Tokens per minute.")
@click.option("--expires", metavar="DURATION", help="Expires after e.g. 12h, 30d or 2w.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE",
              help="Recorded on each trace; team=NAME also shares the team's budget. Repeatable.")
@store_options
@json_option
def create_command(name, models, surfaces, budget_usd, period, rpm, tpm, expires, metadata,
                   config_path, db_url, as_json) -> None:
    """A new key; its secret is printed once."""
    from keel.ops.keys import parse_duration

    fields = dict(
        models=_names(models), surfaces=_names(surfaces), rpm=rpm, tpm=tpm,
        budget_usd=budget_usd, period=period, metadata=_metadata(metadata) or None,
        expires_in_s=parse_duration(expires, "--expires") if expires is not None else None,
    )
    # The first key may come before the first `keel serve`: the store is created if need be.
    record, secret = _with_keys(config_path, db_url, lambda ks: ks.create(name, **fields),
                                must_exist=False)
    _print_secret(record, secret, as_json, "created")


@keys.command("list")
@store_options
@json_option
def list_command(config_path, db_url, as_json) -> None:
    """Every key, revoked and expired ones included (never their secrets)."""
    records = _with_keys(config_path, db_url, lambda ks: ks.list())
    if as_json:
        click.echo(common.dumps([r.to_dict() for r in records]))
    elif not records:
        click.echo("no keys (create one with `keel keys create --name NAME`)")
    else:
        common.console().print(_table(records))


@keys.command("show")
@click.argument("key_id", metavar="ID")
@store_options
@json_option
def show_command(key_id, config_path, db_url, as_json) -> None:
    """One key in full."""
    record = _with_keys(config_path, db_url, lambda ks: ks.get(key_id))
    if as_json:
        click.echo(common.dumps(record.to_dict()))
    else:
        common.console().print(_details(record))


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@store_options
@json_option
def revoke_command(key_id, config_path, db_url, as_json) -> None:
    """Refuse the key from now on (running servers within auth.refresh_interval_s)."""
    record = _with_keys(config_path, db_url, lambda ks: ks.revoke(key_id))
    if as_json:
        click.echo(common.dumps(record.to_dict()))
    else:
        click.echo(f"revoked {record.id} ({record.name})")


@keys.command("rotate")
@click.argument("key_id", metavar="ID")
@store_options
@json_option
def rotate_command(key_id, config_path, db_url, as_json) -> None:
    """A new secret for the key (same id, limits and usage); the old one stops working."""
    record, secret = _with_keys(config_path, db_url, lambda ks: ks.rotate(key_id))
    _print_secret(record, secret, as_json, "rotated")


# -- store -------------------------------------------------------------------------------------


def _with_keys(config_path, db_url, action, *, must_exist: bool = True):
    from keel.ops.keys import KeyStore

    store = common.open_store_for(config_path, db_url, must_exist=must_exist)
    try:
        return action(KeyStore(store))
    finally:
        store.close()


# -- parsing -----------------------------------------------------------------------------------


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--metadata: expected KEY=VALUE, got {pair!r}",
                                 param="metadata")
        metadata[key.strip()] = value.strip()
    return metadata


# -- rendering ---------------------------------------------------------------------------------


def _print_secret(record: KeyRecord, secret: str, as_json: bool, done: str) -> None:
    if as_json:
        click.echo(common.dumps({**record.to_dict(), "secret": secret}))
        return
    click.echo(f"{done} key {record.id} ({record.name})")
    click.echo(f"secret: {secret}")
    click.secho("Store it now; it cannot be shown again (Keel keeps only its hash).", bold=True)


def _table(records: list[KeyRecord]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "name", "hint", "status", "models", "surfaces", "limits", "budget",
                   "metadata", "created", "expires"):
        table.add_column(column, no_wrap=column not in ("surfaces", "metadata"))
    for r in records:
        table.add_row(r.id, r.name, r.hint, _status(r), _list(r.models), ",".join(r.surfaces),
                      _limits(r), _budget(r), _pairs(r.metadata), common.when(r.created_at),
                      common.when(r.expires_at) if r.expires_at else "-")
    return table


def _details(r: KeyRecord) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in [
        ("id", r.id), ("name", r.name), ("hint", r.hint), ("status", _status(r)),
        ("models", _list(r.models)), ("surfaces", ",".join(r.surfaces)),
        ("limits", _limits(r)), ("budget", _budget(r)), ("metadata", _pairs(r.metadata)),
        ("created", common.when(r.created_at)),
        ("expires", common.when(r.expires_at) if r.expires_at else "-"),
        ("revoked", common.when(r.revoked_at) if r.revoked_at else "-"),
    ]:
        grid.add_row(label, value)
    return grid


def _status(r: KeyRecord) -> Text:
    status = r.status()
    return Text(status, style=_STATUS_STYLE[status])


def _list(values) -> str:
    return "all" if values is None else ",".join(values)


def _limits(r: KeyRecord) -> str:
    parts = [f"{r.rpm} rpm" if r.rpm else "", f"{r.tpm} tpm" if r.tpm else ""]
    return " ".join(p for p in parts if p) or "-"


def _budget(r: KeyRecord) -> str:
    return f"${r.budget_usd:g}/{r.period}" if r.budget_usd is not None else "-"


def _pairs(metadata: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in metadata.items()) or "-"
