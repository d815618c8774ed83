"""Console pages: the reference chat, full (/console/chat) and embeddable (/console/chat/embed).

The page lists the routes (keel.yaml `models`) the signed-in key may call, each with its
`console.description` and `console.suggested_prompts`; `?model=NAME` preselects one. Everything
else happens in static/chat.js, which talks to the public API as any client would:
POST /v1/chat/completions (streamed) and POST /v1/feedback with the answer's trace id.

`/console/chat/changes/{trace_id}` answers what the guardrails changed in one request (labels
and counts from the trace's `guard.*` spans, never the matched text), so the chat can say
"ORDER_ID redacted" rather than only the guard's name that the `x-keel-guardrails` header gives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import principal_of
from keel.console.render import render
from keel.errors import KeelError, NotFound
from keel.ops import trace_queries
from keel.ops.principal import Principal

MASKING = ("redact", "pseudonymize", "rewrite")
CHANGES_WAIT_S = 2.0  # a trace reaches the store a moment after its answer ends


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/chat", chat_page, name="console-chat")
    router.add_get("/console/chat/embed", embed_page, name="console-chat-embed")
    router.add_get("/console/chat/changes/{trace_id}", changes, name="console-chat-changes")


def routes_for(config, principal: Principal) -> list[dict[str, Any]]:
    """The chat routes this principal may call, in keel.yaml's order."""
    out = []
    for name, model in config.models.items():
        if not principal.may_call(name):
            continue
        console = model.console
        out.append({
            "name": name,
            "description": console.description if console else None,
            "suggested_prompts": list(console.suggested_prompts) if console else [],
        })
    return out


def _chat_context(request: web.Request) -> tuple[dict[str, Any], int]:
    principal = principal_of(request)
    routes = routes_for(request.app[GATEWAY].config, principal)
    wanted = request.query.get("model")
    names = [r["name"] for r in routes]
    error = None
    if wanted and wanted not in names:
        error = (f"There is no model {wanted!r} that this key may use. "
                 f"Pick one of: {', '.join(names) or '(none)'}.")
    selected = wanted if wanted in names else (names[0] if names else None)
    context = {
        "routes": routes,
        "selected": selected,
        "error": error,
        "may_chat": principal.may_use("chat"),
        "may_feedback": principal.may_use("feedback"),
    }
    return context, 404 if error else 200


async def chat_page(request: web.Request) -> web.Response:
    context, status = _chat_context(request)
    return render(request, "chat.html", title="Chat", status=status, **context)


async def embed_page(request: web.Request) -> web.Response:
    context, status = _chat_context(request)
    return render(request, "chat_embed.html", title="Chat", status=status, **context)


async def changes(request: web.Request) -> web.Response:
    """{"input": [...], "output": [...]}: each {guard, action, labels} a guard acted with."""
    gateway = request.app[GATEWAY]
    trace_id = request.match_info["trace_id"]
    trace = await _trace(gateway, trace_id)
    if trace is None:
        return web.json_response({"error": {"message": f"no trace {trace_id!r}",
                                            "code": "trace_not_found"}}, status=404)
    out: dict[str, list] = {"input": [], "output": []}
    for span in trace.get("spans") or ():
        attrs = span.get("attrs") or {}
        name = str(span.get("name", ""))
        if not name.startswith("guard.") or attrs.get("action") not in (*MASKING, "flag"):
            continue
        stage = "output" if attrs.get("stage") == "output" else "input"
        out[stage].append({"guard": name.removeprefix("guard."), "action": attrs["action"],
                           "labels": attrs.get("labels") or {}})
    return web.json_response(out)


async def _trace(gateway, trace_id: str) -> dict | None:
    """The whole trace id only (no prefixes), waiting briefly for the recorder to write it."""
    store = gateway.runtime.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHANGES_WAIT_S
    while True:
        try:
            trace = await asyncio.to_thread(trace_queries.get_trace, store, trace_id)
            return trace if trace["id"] == trace_id else None
        except NotFound:
            pass
        except KeelError:  # an ambiguous prefix: not a trace id
            return None
        if loop.time() >= deadline or len(trace_id) < 8:
            return None
        if gateway.recorder is not None:
            await asyncio.to_thread(gateway.recorder.flush, 0.5)
        await asyncio.sleep(0.1)
