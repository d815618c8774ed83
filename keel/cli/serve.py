"""`keel serve`: the OpenAI-compatible gateway."""

from __future__ import annotations

import logging
import sys

import click

from keel.config import load_config


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="KEEL_CONFIG",
              help="keel.yaml to use (default: the embedded model, state in ./.keel/).")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve a non-loopback address without API keys (see docs/auth.md).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes sharing the port (see docs/deployment.md).")
def serve(config_path: str | None, host: str | None, port: int | None,
          insecure_no_auth: bool = False, workers: int = 1) -> None:
    """Serve the OpenAI-compatible API."""
    from keel.api.server import run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = load_config(config_path)
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    from keel.api.auth import check_exposure

    check_exposure(config, config.server.host, insecure_no_auth)
    if insecure_no_auth and config.auth_settings() is None:
        click.secho("warning: --insecure-no-auth: no API keys; anyone who can reach "
                    f"{config.server.host}:{config.server.port} can use every route",
                    fg="yellow", err=True)
    if config_path is None:
        click.echo("no --config: serving the embedded model, state in ./.keel/")
    if workers > 1:
        from keel.api.workers import supervise

        sys.exit(supervise(config, workers, announce=lambda line: click.echo(line)))
    run(config, announce=lambda line: click.echo(line))
