"""The traces pages without a browser: the list (filters, pages, first steps), the live feed,
one trace (conversation, spans, retrieval passages, feedback) and replay."""

from __future__ import annotations

import asyncio
import html
import re

import pytest

from keel.console.views import traces as views
from keel.pipeline import Trace


async def chat(http, base, content, model="fake/echo", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    async with http.post(f"{base}/v1/chat/completions", json=body) as r:
        await r.read()
        return r.headers["x-keel-trace-id"]


async def page(http, url, status=200):
    async with http.get(url) as r:
        text = await r.text()
        assert r.status == status, text[:2000]
        assert r.content_type == "text/html"
        return html.unescape(text)


def listed(text):
    """Trace ids in the list, in page order."""
    return re.findall(r'<tr id="trace-([0-9a-f]+)"', text)


async def flushed(gateway):
    await asyncio.to_thread(gateway.recorder.flush, 5)


async def test_console_opens_on_first_steps_with_this_servers_curl(keel_console, http):
    base, _gateway = keel_console
    async with http.get(f"{base}/console", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/console/traces"
    text = await page(http, f"{base}/console/traces")
    assert "No traces yet" in text
    assert f"curl {base}/v1/chat/completions" in text
    assert '"model": "fake/echo"' in text  # a model this server has
    assert "Authorization" not in text  # auth is off here
    assert text.count("<h1>") == 1 and "<title>Traces · Keel console</title>" in text


async def test_list_is_newest_first_and_filters_by_the_url(keel_console, http):
    base, gateway = keel_console
    first = await chat(http, base, "about the lighthouse keeper")
    failed = await chat(http, base, "hello", model="fake/error-500")
    last = await chat(http, base, "something else")
    await flushed(gateway)
    url = f"{base}/console/traces"
    text = await page(http, url)
    assert listed(text) == [last, failed, first]
    assert "No traces yet" not in text
    assert f'href="/console/traces/{first}"' in text
    assert listed(await page(http, f"{url}?status=error")) == [failed]
    assert listed(await page(http, f"{url}?status=ok&model=fake/echo")) == [last, first]
    assert listed(await page(http, f"{url}?q=LIGHTHOUSE")) == [first]
    assert listed(await page(http, f"{url}?provider=fake&since=1h")) == [last, failed, first]
    assert listed(await page(http, f"{url}?provider=other")) == []
    assert listed(await page(http, f"{url}?until=2020-01-01")) == []
    # Feedback: the latest one counts.
    for trace_id, score in ((first, 1), (last, 1), (last, -1)):
        async with http.post(f"{base}/v1/feedback",
                             json={"trace_id": trace_id, "score": score}) as r:
            assert r.status == 201
    assert listed(await page(http, f"{url}?feedback=down")) == [last]
    assert listed(await page(http, f"{url}?feedback=up")) == [first]
    assert listed(await page(http, f"{url}?feedback=none")) == [failed]
    filtered = await page(http, f"{url}?feedback=none&model=fake/error-500")
    assert 'value="fake/error-500"' in filtered and "Clear filters" in filtered
    empty = await page(http, f"{url}?q=nothing+like+this")
    assert "No traces match these filters" in empty and "No traces yet" not in empty


@pytest.mark.parametrize("query, says", [
    ("status=teapot", "status"),
    ("feedback=meh", "feedback"),
    ("since=yesterday-ish", "since"),
    ("before=garbage", "cursor"),
])
async def test_a_bad_filter_is_a_400_page(keel_console, http, query, says):
    base, _ = keel_console
    text = await page(http, f"{base}/console/traces?{query}", status=400)
    assert "Bad filter" in text and says in text and "Traceback" not in text


async def test_older_pages_by_cursor(keel_console, http, monkeypatch):
    base, gateway = keel_console
    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    made = [await chat(http, base, f"message {i}") for i in range(3)]
    await flushed(gateway)
    text = await page(http, f"{base}/console/traces?model=fake/echo")
    assert listed(text) == [made[2], made[1]]
    older = re.search(r'href="([^"]+)" rel="next"', text).group(1)
    assert "model=fake%2Fecho" in older
    second = await page(http, base + older)
    assert listed(second) == [made[0]]
    assert 'rel="next"' not in second and "Newest" in second
    assert "data-live-url" not in second  # live rows only on the first page


async def test_live_feed_sends_rows_for_the_pages_filters(keel_console, http):
    base, gateway = keel_console
    old = await chat(http, base, "already on the page")
    await flushed(gateway)
    text = await page(http, f"{base}/console/traces?model=fake/echo")
    live = re.search(r'data-live-url="([^"]+)"', text).group(1)
    assert live.startswith("/console/traces/live?model=fake%2Fecho&after=")
    async with http.get(base + live) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        skipped = await chat(http, base, "other model", model="fake/json")
        new = await chat(http, base, "a new one")
        await flushed(gateway)
        got = ""
        async with asyncio.timeout(10):
            while f"trace-{new}" not in got or not got.endswith("\n\n"):
                got += (await stream.content.readline()).decode()
    assert "event: row" in got and f"/console/traces/{new}" in got
    assert skipped not in got  # another model: filtered out
    assert got.index(f"trace-{old}") < got.index(f"trace-{new}")  # oldest first, for prepending


async def test_trace_page_shows_conversation_spans_usage_and_feedback(keel_console, http):
    base, gateway = keel_console
    trace_id = await chat(http, base, "Where is my parcel?", user="alice", seed=7,
                          temperature=0.2)
    async with http.post(f"{base}/v1/feedback", json={
            "trace_id": trace_id, "score": -1, "comment": "too vague",
            "correction": "It ships on Monday."}) as r:
        assert r.status == 201
    await flushed(gateway)
    text = await page(http, f"{base}/console/traces/{trace_id[:14]}")  # a prefix works too
    assert f"<h1>Trace <span class=\"mono\">{trace_id}</span></h1>" in text
    assert text.count("<h1>") == 1
    assert 'class="msg role-user"' in text and "Where is my parcel?" in text
    assert 'class="msg role-assistant"' in text
    assert '<span class="span-name">provider</span>' in text
    assert "fake/echo" in text and "on fake" in text
    assert "alice" in text and "href=\"/console/traces?user=alice\"" in text
    assert "too vague" in text and "It ships on Monday." in text and "Thumbs down" in text
    assert "Same seed (7)" in text and '"temperature": 0.2' in text
    assert "<summary>Raw JSON</summary>" in text


async def test_retrieval_span_shows_passages_and_scores(keel_console, http):
    base, gateway = keel_console
    trace = Trace(model="console/grounded", provider="fake", upstream_model="echo")
    trace.request = {"model": "console/grounded",
                     "messages": [{"role": "user", "content": "How do I reset my password?"}]}
    with trace.span("knowledge"):
        with trace.span("knowledge.retrieve") as span:
            span.attrs.update(collection="support", query="reset password", version="v3",
                              hits=[{"chunk_id": 11, "score": 0.8123, "source": "faq.md"},
                                    {"chunk_id": 12, "score": 0.2, "source": "other.md"}],
                              used=[11])
        with trace.span("tool:lookup_order") as tool:
            tool.attrs.update(arguments='{"order": "ORD-1"}', ok=True)
        with trace.span("provider") as provider:
            provider.attrs.update(provider="fake", model="echo")
    trace.response = {
        "choices": [{"message": {"role": "assistant", "content": "Use the link [1].",
                                 "tool_calls": [{"id": "call_1", "type": "function",
                                                 "function": {"name": "lookup_order",
                                                              "arguments": '{"order":"ORD-1"}'}}]},
                     "finish_reason": "stop"}],
        "citations": [{"index": 1, "cited": True, "chunk_id": 11, "document_id": "faq",
                       "title": "Password reset", "source": "faq.md", "location": None,
                       "score": 0.8123, "text": "Click 'Forgot password' on the sign-in page."}],
        "tool_runs": [{"name": "lookup_order", "arguments": '{"order":"ORD-1"}', "ok": True,
                       "duration_ms": 1.5}],
    }
    trace.finish(200)
    gateway.record(trace)
    await flushed(gateway)
    text = await page(http, f"{base}/console/traces/{trace.id}")
    assert "Retrieved from <code>support</code> for “reset password”" in text
    assert "0.812" in text and "0.200" in text
    assert "Click 'Forgot password' on the sign-in page." in text  # the passage, by chunk id
    assert text.count('<span class="badge ok">used</span>') == 1
    assert "Password reset" in text and '<span class="badge ok">cited</span>' in text
    assert "Tool call <code>lookup_order</code>" in text and '"order": "ORD-1"' in text
    assert "kind-retrieval" in text and "kind-tool" in text and "kind-provider" in text
    assert "Replay" in text  # console/grounded is not configured here, so it says why
    assert "is no longer configured" in text


async def test_unknown_trace_is_a_404_page(keel_console, http):
    base, _ = keel_console
    for path in ("/console/traces/ffffffffffff", "/console/traces/x%25"):
        text = await page(http, base + path, status=404)
        assert "Trace not found" in text and "Traceback" not in text
    async with http.post(f"{base}/console/traces/ffffffffffff/replay",
                         headers={"HX-Request": "true"}) as r:
        assert r.status == 404 and "Trace not found" in await r.text()


async def test_replay_sends_the_same_request_and_shows_both(keel_console, http):
    base, gateway = keel_console
    original = await chat(http, base, "say this back", seed=42, stream=True)
    await flushed(gateway)
    async with http.post(f"{base}/console/traces/{original}/replay",
                         headers={"HX-Request": "true"}) as r:
        assert r.status == 200
        text = html.unescape(await r.text())
    assert "<html" not in text  # a fragment for htmx
    new = re.search(r'New trace: <a href="/console/traces/([0-9a-f]+)"', text).group(1)
    assert new != original
    assert "Original" in text and "Replay" in text and text.count("say this back") >= 2
    from keel.ops.trace_queries import get_trace

    replay = get_trace(gateway.runtime.store, new)
    assert replay["request"]["seed"] == 42 and replay["request"]["messages"][0]["content"] == \
        "say this back"
    assert replay["stream"] is False and replay["status"] == 200
    assert replay["spans"] and replay["spans"][-1]["name"] == "provider"
    # Without htmx: a whole page.
    async with http.post(f"{base}/console/traces/{original}/replay") as r:
        full = await r.text()
    assert r.status == 200 and "<h1>Replay of trace" in full


async def test_replay_without_a_seed_says_so(keel_console, http):
    base, gateway = keel_console
    original = await chat(http, base, "no seed here")
    await flushed(gateway)
    text = await page(http, f"{base}/console/traces/{original}")
    assert "The original had no seed" in text
    async with http.post(f"{base}/console/traces/{original}/replay",
                         headers={"HX-Request": "true"}) as r:
        assert "the answers may differ" in await r.text()


async def test_live_feed_needs_a_starting_point(keel_console, http):
    base, _ = keel_console
    for query in ("", "?after=soon", "?after=1&status=teapot"):
        async with http.get(f"{base}/console/traces/live{query}") as r:
            assert r.status == 400


async def test_replay_is_admitted_as_the_signed_in_key(tmp_path, http):
    """A key without `chat` cannot replay (the page says why); one scoped to other models is
    refused as the API would refuse it, and no model is called."""
    from aiohttp.test_utils import TestServer

    from keel.api import create_app
    from keel.config import AuthConfig
    from keel.gateway import Gateway
    from keel.ops.keys import KeyStore
    from tests.api.conftest import fake_config

    admin = "sk-admin-replay-test-0123456789"
    gateway = Gateway(fake_config(tmp_path, auth=AuthConfig(admin_key=admin)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with http.post(f"{base}/v1/chat/completions", headers={
                "Authorization": f"Bearer {admin}"}, json={
                "model": "fake/echo", "messages": [{"role": "user", "content": "hi"}]}) as r:
            original = r.headers["x-keel-trace-id"]
        await flushed(gateway)
        keys = KeyStore(gateway.runtime.store)
        _, viewer = keys.create("viewer", surfaces=["console"])
        _, scoped = keys.create("scoped", surfaces=["console", "chat"], models=["fake/json"])
        for key, says in ((viewer, "this key may not use chat"),
                          (scoped, "may not use the model")):
            headers = {"Cookie": f"keel_console={key}", "HX-Request": "true"}
            async with http.post(f"{base}/console/traces/{original}/replay",
                                 headers=headers) as r:
                assert r.status == 200 and says in html.unescape(await r.text()), says
        await flushed(gateway)
        from keel.ops.trace_queries import list_traces

        calls = list_traces(gateway.runtime.store, 10)
        assert [t["status"] for t in calls] == [403, 200]  # the scoped key's refusal, traced
    finally:
        await server.close()
