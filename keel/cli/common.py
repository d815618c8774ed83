"""What the `keel` subcommands share: the store options, output helpers and time parsing."""

from __future__ import annotations

import re
import time
from datetime import datetime

import click
import orjson
from rich.console import Console

from keel.errors import ConfigError, InvalidRequest

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def store_options(fn):
    """--config and --db: which keel.yaml (and so which store and embedders) to use."""
    fn = click.option(
        "--db", "db_url", metavar="URL", help="Database URL; overrides the config."
    )(fn)
    fn = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), metavar="PATH",
        help="keel.yaml to use (default: the embedded defaults, store ./.keel/keel.db).",
    )(fn)
    return fn


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, not tables.")(fn)


def open_store_for(config_path: str | None, db_url: str | None, *, must_exist: bool = True):
    """The store of `--db` or the config. Reading commands pass must_exist, so they never leave
    an empty database behind in whatever folder they ran in."""
    from keel.config import load_config
    from keel.store import open_store
    from keel.store.db import sqlite_path

    url = db_url or load_config(config_path).database_url()
    path = sqlite_path(url)
    if must_exist and path is not None and not path.exists():
        raise ConfigError(f"no database at {path} (run `keel serve` first, or pass --config / --db)")
    return open_store(url)


def console() -> Console:
    out = Console()
    # Piped into grep or a file, rich would assume 80 columns and cut ids short.
    return out if out.is_terminal else Console(width=400)


def dumps(value) -> str:
    return orjson.dumps(
        value,
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        default=str,
    ).decode()


def since(age: str) -> float:
    """Epoch seconds `age` ago; `age` like 30s, 10m, 2h or 1d."""
    match = _DURATION.fullmatch(age.strip().lower())
    if not match:
        raise InvalidRequest(f"--since: expected an age like 30s, 10m, 2h or 1d, got {age!r}")
    return time.time() - float(match.group(1)) * _SECONDS[match.group(2)]


def when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
