"""`keel fake-upstream`: serve the fake provider as an OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio

import click

from keel.providers.fake import MODELS, FakeOptions
from keel.providers.fake_server import base_url, make_app, start_site


@click.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=18001, show_default=True, help="Port to listen on (0: any free).")
@click.option("--slow-ms", default=200.0, show_default=True, help="Delay of the `slow` model.")
@click.option("--api-key", default=None, help="Require `Authorization: Bearer KEY`.")
def fake_upstream(host: str, port: int, slow_ms: float, api_key: str | None) -> None:
    """Serve the scripted `fake` models over HTTP, as an OpenAI-compatible upstream.

    The model name chooses the behaviour: echo, json, bad-json, tool-call, slow, slow-<ms>,
    flaky, error-429, error-<status>, fixed:<text>; any other name echoes. It also implements
    OpenAI's fine-tuning API (files, fine_tuning/jobs, events, cancel) with scripted jobs, and
    serves each job's `ft:...` model once it succeeds (docs/distill-train.md).
    """
    app = make_app(FakeOptions(slow_ms=slow_ms), api_key=api_key)

    async def serve() -> None:
        runner, bound = await start_site(app, host, port)
        click.echo(f"fake upstream listening on {base_url(host, bound)}", nl=True)
        click.echo(f"models: {', '.join(MODELS)}, fixed:<text>")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        _runner().run(serve())
    except KeyboardInterrupt:
        pass


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no Windows wheels)
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
