"""Entry point of the `keel` command: the group and its subcommands."""

from __future__ import annotations

import sys

import click

from keel import __version__
from keel.errors import KeelError


class KeelGroup(click.Group):
    """Shows a KeelError as one clean line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeelError as exc:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=KeelGroup)
@click.version_option(__version__, prog_name="keel")
def cli() -> None:
    """Keel: an OpenAI-compatible production stack for LLM applications."""


def _register() -> None:
    from keel.cli.cache import cache_group
    from keel.cli.distill import distill_group
    from keel.cli.evals import eval_group
    from keel.cli.fake_upstream import fake_upstream
    from keel.cli.guard import guard_group
    from keel.cli.keys import keys
    from keel.cli.knowledge import collections, ingest, search
    from keel.cli.router import router_group
    from keel.cli.serve import serve
    from keel.cli.traces import traces
    from keel.cli.usage import usage

    for command in (serve, ingest, search, collections, eval_group, traces, fake_upstream,
                    keys, usage, guard_group, router_group, cache_group, distill_group):
        cli.add_command(command)


_register()


def main() -> None:
    cli()
