"""The fake provider served over HTTP in the OpenAI wire format: a mock upstream on a real socket.

    POST /v1/chat/completions   JSON, or SSE (`data: {...}` ... `data: [DONE]`) when `stream`;
                                the usage chunk only when `stream_options.include_usage`
    GET  /v1/models             the fake model names
    GET  /v1/models/{id}
    /v1/files, /v1/fine_tuning/jobs   the fine-tuning subset, scripted (fake_finetune.py)

Errors are OpenAI-shaped JSON with the status a real upstream would use (429 with Retry-After,
500, 401 ...). It is the upstream of the overhead benchmark, so a request does as little as
possible: one orjson parse, the fake's answer, one orjson dump, no validation beyond what
routing needs.

`keel fake-upstream` runs it; tests use `serve_fake_upstream()`, which serves it from a
background thread on a free loopback port and yields the base URL.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Iterator

import orjson
from aiohttp import web

from keel.errors import KeelError
from keel.providers.fake import MODELS, FakeOptions, FakeProvider

PROVIDER = web.AppKey("provider", FakeProvider)
API_KEY = web.AppKey("api_key", object)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}


def make_app(options: FakeOptions | None = None, api_key: str | None = None) -> web.Application:
    """The app; with `api_key`, requests must carry `Authorization: Bearer <api_key>`."""
    app = web.Application()
    app[PROVIDER] = FakeProvider("fake-upstream", options or FakeOptions())
    app[API_KEY] = f"Bearer {api_key}" if api_key else None
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id}", get_model)
    # Files and fine_tuning/jobs (imported here: fake_finetune imports this module).
    from keel.providers.fake_finetune import add_fine_tuning

    add_fine_tuning(app)
    return app


async def chat_completions(request: web.Request) -> web.StreamResponse:
    expected = request.app[API_KEY]
    if expected is not None and request.headers.get("Authorization") != expected:
        return _error(401, "Incorrect API key provided", code="invalid_api_key")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error(400, "you must provide a model parameter", param="model")
    if not isinstance(body.get("messages"), list):
        return _error(400, "'messages' is a required property", param="messages")
    provider = request.app[PROVIDER]
    if body.get("stream"):
        return await _stream(request, provider, body)
    try:
        result = await provider.chat(body, body["model"])
    except KeelError as exc:
        return _keel_error(exc)
    return web.Response(body=orjson.dumps(result), content_type="application/json")


async def _stream(request: web.Request, provider: FakeProvider, body: dict) -> web.StreamResponse:
    chunks = provider.stream(body, body["model"])
    try:
        # The fake decides errors before its first chunk, so they still get a proper status.
        first = await anext(chunks)
    except KeelError as exc:
        return _keel_error(exc)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    try:
        await resp.write(b"data: " + orjson.dumps(first) + b"\n\n")
        async for chunk in chunks:
            if chunk["choices"] or include_usage:
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    finally:
        await chunks.aclose()
    # [DONE] and the end of the chunked body in one write, so a client that stops reading at
    # [DONE] still finds the body complete and can reuse the connection.
    await resp.write_eof(_DONE)
    return resp


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "keel-fake"}


_MODEL_LIST = orjson.dumps(
    {
        "object": "list",
        "data": [_model(m) for m in MODELS],
    }
)


async def list_models(request: web.Request) -> web.Response:
    return web.Response(body=_MODEL_LIST, content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    body = orjson.dumps(_model(request.match_info["id"]))
    return web.Response(body=body, content_type="application/json")


def _keel_error(exc: KeelError) -> web.Response:
    status = getattr(exc, "upstream_status", exc.status)
    return _error(status, exc.message, param=exc.param, code=exc.code, headers=exc.headers)


def _error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> web.Response:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]


def base_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/v1"


@contextmanager
def serve_fake_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    options: FakeOptions | None = None,
    api_key: str | None = None,
) -> Iterator[str]:
    """Run the fake upstream in a background thread with its own event loop; yields its base
    URL (`http://127.0.0.1:PORT/v1`). Its own loop keeps it serving while a test blocks in a
    sync client, and keeps its work apart from the loop under test."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            app = make_app(options, api_key)
            runner, bound = loop.run_until_complete(start_site(app, host, port))
        except BaseException as exc:  # reported to the caller below
            state["error"] = exc
            ready.set()
            loop.close()
            return
        state["port"] = bound
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    thread = threading.Thread(target=run, name="keel-fake-upstream", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the fake upstream did not start within 10 s")
    if "error" in state:
        raise state["error"]
    try:
        yield base_url(host, state["port"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
