"""`keel serve`: the OpenAI-compatible gateway."""

from __future__ import annotations

import logging

import click

from keel.config import load_config


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KEEL_CONFIG",
              help="keel.yaml to use (default: the embedded model, state in ./.keel/).")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Serve the OpenAI-compatible API."""
    from keel.api.server import run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = load_config(config_path)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    if config_path is None:
        click.echo("no --config: serving the embedded model, state in ./.keel/")
    run(config, announce=lambda line: click.echo(line))
