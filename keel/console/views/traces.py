"""Console pages: the trace list (filters, pages, live rows over SSE), one trace, and replay.

    GET  /console/traces                    the list; filters are a GET form, so the URL holds them
    GET  /console/traces/live               SSE: new rows, rendered, for the list's filters
    GET  /console/traces/{trace_id}         conversation, span waterfall, usage, feedback, raw JSON
    POST /console/traces/{trace_id}/replay  the same request again, shown beside the original

Data comes from keel.ops.trace_queries and keel.ops.feedback (the CLI's own functions); the
replay runs through the route's whole layer chain and records a trace of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from keel.api.appkeys import GATEWAY
from keel.api.auth import principal_of
from keel.console.render import error_page as render_error
from keel.console.render import render, render_fragment
from keel.errors import InvalidRequest, KeelError, NotFound
from keel.ops.feedback import feedback_for, sentiment
from keel.ops.trace_queries import cursor, get_trace, list_traces, parse_cursor
from keel.pipeline import Trace

PAGE_SIZE = 50
LIVE_POLL_S = 1.0
# A trace is written when its request ends, stamped with when it began: the live feed looks
# this far back so a long request finishing after a shorter, newer one still shows.
LIVE_LOOKBACK_S = 120.0
LIVE_MAX_S = 600.0  # then the browser's EventSource reconnects by itself
LIVE_PING_S = 15.0
FILTERS = ("q", "model", "provider", "status", "feedback", "since", "until", "key", "user",
           "session")
FEEDBACK_CHOICES = (("", "All"), ("any", "With feedback"), ("up", "Thumbs up"),
                    ("down", "Thumbs down"), ("none", "No feedback"))
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)", re.IGNORECASE)
_AGE_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/traces", trace_list, name="console-traces")
    # Before the {trace_id} route, which would otherwise take "live" for an id.
    router.add_get("/console/traces/live", trace_live, name="console-traces-live")
    router.add_get("/console/traces/{trace_id}", trace_page, name="console-trace")
    router.add_post("/console/traces/{trace_id}/replay", trace_replay,
                    name="console-trace-replay")


# -- the list ------------------------------------------------------------------------------


async def trace_list(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    form = {name: request.query.get(name, "").strip() for name in FILTERS}
    before_raw = request.query.get("before", "").strip()
    try:
        criteria = _criteria(form)
        before = parse_cursor(before_raw) if before_raw else None
        rows = await asyncio.to_thread(list_traces, gateway.runtime.store, PAGE_SIZE + 1,
                                       before=before, **criteria)
    except InvalidRequest as exc:
        return _error_page(request, 400, "Bad filter", exc.message)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    filtered = any(form.values())
    live = before is None and not form["until"]
    newest = max((r["created_at"] for r in rows), default=time.time())
    query = {k: v for k, v in form.items() if v}
    return render(
        request, "traces.html", title="Traces",
        rows=rows, form=form, filtered=filtered, paged=before is not None,
        older=_url("/console/traces", {**query, "before": cursor(rows[-1])}) if more else None,
        newest_url=_url("/console/traces", query),
        live_url=_url("/console/traces/live", {**query, "after": repr(newest)}) if live else None,
        models=sorted(gateway.routes), providers=sorted(gateway.providers),
        feedback_choices=FEEDBACK_CHOICES,
        first_steps=None if rows or filtered or before else _first_steps(request),
    )


async def trace_live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new trace matching the filters as a rendered `<tr>` (event
    `row`) from LIVE_LOOKBACK_S before `after` on. Polls the store every LIVE_POLL_S until the
    browser leaves or the server stops; the page drops rows it already has."""
    gateway = request.app[GATEWAY]
    form = {name: request.query.get(name, "").strip() for name in FILTERS}
    try:
        criteria = _criteria(form)
        after = float(request.query["after"])  # the list page's newest row (or its own time)
    except (InvalidRequest, KeyError, ValueError) as exc:
        message = exc.message if isinstance(exc, InvalidRequest) else \
            "after: the time (epoch seconds) of the newest row the page has"
        raise web.HTTPBadRequest(text=message) from None
    criteria.pop("until", None)
    since = max(criteria.pop("since", None) or 0.0, after - LIVE_LOOKBACK_S)
    store = gateway.runtime.store
    try:  # the first look also checks the filters, while a 400 can still be sent
        rows = await asyncio.to_thread(list_traces, store, PAGE_SIZE, since=since, **criteria)
    except InvalidRequest as exc:
        raise web.HTTPBadRequest(text=exc.message) from None
    # Rows from the lookback window go out once even if the page has them (it drops those):
    # one written after the page was drawn may be stamped before the page's newest row.
    sent: set[str] = set()
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    started = last_write = time.monotonic()
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            for row in [r for r in reversed(rows) if r["id"] not in sent]:
                sent.add(row["id"])
                html = render_fragment("traces/_row.html", row=row, fresh=True)
                data = "".join(f"data: {line}\n" for line in html.strip().splitlines())
                await response.write(f"event: row\nid: {row['id']}\n{data}\n".encode())
                last_write = time.monotonic()
                since = max(since, row["created_at"] - LIVE_LOOKBACK_S)
            if time.monotonic() - last_write > LIVE_PING_S:
                await response.write(b": ping\n\n")
                last_write = time.monotonic()
            await asyncio.sleep(LIVE_POLL_S)
            if time.monotonic() - started > LIVE_MAX_S or _gone(request):
                break
            rows = await asyncio.to_thread(list_traces, store, PAGE_SIZE, since=since,
                                           **criteria)
    except ConnectionResetError:
        pass  # the browser left
    return response


def _gone(request: web.Request) -> bool:
    """The browser left, or the server is shutting down (aiohttp's pre-shutdown marks each
    connection `_close`; without this check an open console tab would hold `keel serve`'s
    exit for the whole shutdown timeout)."""
    transport = request.transport
    return (transport is None or transport.is_closing()
            or bool(getattr(request.protocol, "_close", False)))


def _criteria(form: dict[str, str]) -> dict[str, Any]:
    """list_traces' keyword arguments from the form's fields (blank fields: no filter)."""
    criteria: dict[str, Any] = {
        "model": form["model"] or None,
        "provider": form["provider"] or None,
        "status": form["status"] or None,
        "feedback": form["feedback"] or None,
        "text": form["q"] or None,
        "key_id": form["key"] or None,
        "user": form["user"] or None,
        "session_id": form["session"] or None,
    }
    if form["since"]:
        criteria["since"] = _when(form["since"], "since")
    if form["until"]:
        criteria["until"] = _when(form["until"], "until")
    return {k: v for k, v in criteria.items() if v is not None}


def _when(value: str, field: str) -> float:
    """An age ("30m", "2h", "7d": that long ago) or a date and time (UTC unless it says)."""
    age = _AGE.fullmatch(value.strip())
    if age:
        return time.time() - float(age.group(1)) * _AGE_SECONDS[age.group(2).lower()]
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace(" UTC", "").replace("Z", ""))
    except ValueError:
        raise InvalidRequest(
            f"{field}: expected an age such as 30m, 2h or 7d, or a date and time such as "
            f"2026-01-31 14:00 (UTC), got {value!r}", param=field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _first_steps(request: web.Request) -> dict[str, str]:
    """What a fresh install shows: the exact request that makes a first trace."""
    gateway = request.app[GATEWAY]
    model = next(iter(gateway.routes), "MODEL")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    auth = ' \\\n  -H "Authorization: Bearer $KEEL_API_KEY"' if gateway.keys is not None else ""
    url = f"{request.url.origin()}/v1/chat/completions"
    command = (f"curl {url}{auth} \\\n  -H 'Content-Type: application/json' \\\n"
               f"  -d '{body}'")
    return {"command": command, "model": model, "chat": "/console/chat"}


def _url(path: str, query: dict[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


# -- one trace -----------------------------------------------------------------------------


async def trace_page(request: web.Request) -> web.Response:
    store = request.app[GATEWAY].runtime.store
    try:
        trace = await asyncio.to_thread(get_trace, store, request.match_info["trace_id"])
    except NotFound as exc:
        return _error_page(request, 404, "Trace not found", exc.message)
    except InvalidRequest as exc:
        return _error_page(request, 400, "Ambiguous trace id", exc.message)
    feedback = await asyncio.to_thread(feedback_for, store, trace["id"])
    for entry in feedback:
        entry["sentiment"] = sentiment(entry["score"], entry["scale"])
    return render(request, "trace.html", title=f"Trace {trace['id'][:12]}", trace=trace,
                  view=trace_view(trace), feedback=feedback,
                  replay=replay_notes(trace, request.app[GATEWAY], principal_of(request)))


def trace_view(trace: dict[str, Any]) -> dict[str, Any]:
    """What the trace page draws: the conversation, the answer, and the spans placed on a
    timeline (percent offsets), each with the passages a retrieval found."""
    request = trace.get("request") if isinstance(trace.get("request"), dict) else {}
    response = trace.get("response") if isinstance(trace.get("response"), dict) else {}
    messages = [m for m in request.get("messages") or () if isinstance(m, dict)]
    answer = _answer(response)
    passages = {c.get("chunk_id"): c for c in answer["citations"] if isinstance(c, dict)}
    spans = [s for s in trace.get("spans") or () if isinstance(s, dict)]
    total = max([trace.get("latency_ms") or 0.0]
                + [(s.get("start_ms") or 0.0) + (s.get("duration_ms") or 0.0) for s in spans])
    timeline = []
    for span in spans:
        start, duration = span.get("start_ms") or 0.0, span.get("duration_ms") or 0.0
        attrs = span.get("attrs") if isinstance(span.get("attrs"), dict) else {}
        timeline.append({
            "name": str(span.get("name") or "?"),
            "depth": int(span.get("depth") or 0),
            "start_ms": start,
            "duration_ms": span.get("duration_ms"),
            "attrs": attrs,
            "kind": _span_kind(span.get("name") or "", attrs),
            "left": 100.0 * start / total if total else 0.0,
            "width": max(100.0 * duration / total, 0.4) if total else 100.0,
            "hits": [{**hit, "passage": passages.get(hit.get("chunk_id"), {}).get("text"),
                      "used": hit.get("chunk_id") in (attrs.get("used") or ())}
                     for hit in attrs.get("hits") or () if isinstance(hit, dict)],
        })
    return {"messages": [_message(m) for m in messages], "answer": answer,
            "timeline": timeline, "total_ms": total, "params": _params(request)}


def _answer(response: dict[str, Any]) -> dict[str, Any]:
    """The answer of a chat.completion, or of a stream's summary (keel.api.sse)."""
    choices = response.get("choices") or []
    if choices and isinstance(choices[0], dict):
        message = _message(choices[0].get("message") or {})
        finish_reason = choices[0].get("finish_reason")
    elif "content" in response or "tool_call_deltas" in response:
        message = _message({"role": "assistant", "content": response.get("content"),
                            "tool_calls": response.get("tool_call_deltas")})
        finish_reason = response.get("finish_reason")
    else:
        message, finish_reason = None, None
    return {"message": message, "finish_reason": finish_reason,
            "citations": [c for c in response.get("citations") or () if isinstance(c, dict)],
            "tool_runs": [r for r in response.get("tool_runs") or () if isinstance(r, dict)],
            "usage": response.get("usage")}


def _message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):  # content parts: text, images, audio
        text = "\n".join(p.get("text", "") if p.get("type") == "text" else f"[{p.get('type')}]"
                         for p in content if isinstance(p, dict))
    else:
        text = "" if content is None else str(content)
    calls = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") or {}
            calls.append({"id": call.get("id"), "name": function.get("name"),
                          "arguments": _pretty_arguments(function.get("arguments"))})
    return {"role": message.get("role") or "?", "name": message.get("name"), "text": text,
            "tool_calls": calls, "tool_call_id": message.get("tool_call_id"),
            "refusal": message.get("refusal")}


def _pretty_arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        except ValueError:
            return arguments
    return json.dumps(arguments, indent=2, ensure_ascii=False, default=str)


def _params(request: dict[str, Any]) -> dict[str, Any]:
    """The request's settings besides its messages (temperature, seed, tools...)."""
    return {k: v for k, v in request.items() if k not in ("messages", "model")}


def _span_kind(name: str, attrs: dict[str, Any]) -> str:
    if name == "provider" or name == "router.attempt":
        return "provider"
    if name.startswith("tool:") or name == "tools":
        return "tool"
    if name.startswith("knowledge"):
        return "retrieval"
    if name.startswith("guard"):
        return "guard"
    if name == "cache":
        return "cache"
    return "layer"


# -- replay --------------------------------------------------------------------------------


def replay_notes(trace: dict[str, Any], gateway, principal) -> dict[str, Any]:
    """Whether the trace can be replayed (by this key), and what to say about seed and
    streaming."""
    if not principal.may_use("chat"):
        return {"possible": False, "why": "Replaying sends a chat request, and this key may not "
                "use chat (an admin can grant it: `keel keys create --surfaces console,chat`)."}
    request = trace.get("request")
    if trace.get("endpoint") != "chat.completions":
        return {"possible": False, "why": "Only chat completions can be replayed."}
    if not isinstance(request, dict) or not request.get("messages"):
        return {"possible": False,
                "why": "The request body was not recorded (tracing.record_bodies is off)."}
    if request.get("model") not in gateway.routes:
        return {"possible": False,
                "why": f"The model {request.get('model')!r} is no longer configured."}
    return {"possible": True, "seed": request.get("seed"), "streamed": bool(request.get("stream"))}


async def trace_replay(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    store = gateway.runtime.store
    try:
        original = await asyncio.to_thread(get_trace, store, request.match_info["trace_id"])
    except NotFound as exc:
        return _error_page(request, 404, "Trace not found", exc.message)
    except InvalidRequest as exc:
        return _error_page(request, 400, "Ambiguous trace id", exc.message)
    notes = replay_notes(original, gateway, principal_of(request))
    context: dict[str, Any] = {"original": original, "notes": notes, "replay": None,
                               "error": None, "original_view": trace_view(original)}
    if notes["possible"]:
        trace = Trace(endpoint="chat.completions")
        try:
            await _replay(gateway, request, original, trace)
        except KeelError as exc:
            context["error"] = exc.message
        if gateway.recorder is not None:  # so the link to the new trace works at once
            await asyncio.to_thread(gateway.recorder.flush, 5.0)
        context["replay"] = {"id": trace.id, "status": trace.status,
                             "latency_ms": trace.latency_ms,
                             "prompt_tokens": trace.prompt_tokens,
                             "completion_tokens": trace.completion_tokens,
                             "cost_usd": trace.cost_usd,
                             "system_fingerprint": trace.system_fingerprint,
                             "view": trace_view({"request": trace.request,
                                                 "response": trace.response})}
    if "HX-Request" in request.headers:
        return web.Response(text=render_fragment("traces/_replay.html", **context),
                            content_type="text/html", charset="utf-8")
    return render(request, "traces/replay.html", title=f"Replay of {original['id'][:12]}",
                  **context)


async def _replay(gateway, request: web.Request, original: dict[str, Any], trace: Trace) -> None:
    """The original body once more, non-streamed, through the route's layers, admitted as the
    signed-in key and recorded as a new trace."""
    principal = principal_of(request)
    body = {k: v for k, v in original["request"].items() if k not in ("stream", "stream_options")}
    trace.user = body.get("user") if isinstance(body.get("user"), str) else None
    trace.session_id = original.get("session_id")
    await gateway.complete(body, trace=trace, principal=principal)


# -- errors --------------------------------------------------------------------------------


def _error_page(request: web.Request, status: int, heading: str, message: str) -> web.Response:
    return render_error(request, status, heading, message,
                        [("/console/traces", "Back to the traces")])
