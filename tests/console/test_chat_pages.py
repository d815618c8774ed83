"""The reference chat's pages without a browser: which routes a key is offered, their suggested
prompts and descriptions, the embeddable page (no console nav), and what the guardrails changed."""

from __future__ import annotations

import html
import json
import re

import pytest
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import AuthConfig, ModelConfig, RouteConsoleConfig
from keel.gateway import Gateway
from tests.api.conftest import fake_config

ADMIN_KEY = "admin-secret-for-the-chat-page-tests-0123456789"


def chat_config(tmp_path, **overrides):
    config = fake_config(tmp_path, **overrides)
    models = dict(config.models)
    models["fake/echo"] = ModelConfig(provider="fake", model="echo", console=RouteConsoleConfig(
        description="says back what you said",
        suggested_prompts=["What is <b>Keel</b>?", "Say hello"]))
    models["support/guarded"] = ModelConfig(provider="fake", model="echo", guardrails={"input": [
        {"denylist": {"words": ["forbidden-topic"], "action": "block", "name": "topics"}},
        {"regex": {"patterns": {"ORDER_ID": r"ORD-\d{6}"}, "action": "redact"}}]})
    return config.model_copy(update={"models": models})


@pytest.fixture
async def keel_auth(tmp_path):
    """(base URL, gateway) of an in-process Keel with auth on (the admin key above)."""
    gateway = Gateway(chat_config(tmp_path, auth=AuthConfig(admin_key=ADMIN_KEY,
                                                            refresh_interval_s=0.2)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


@pytest.fixture
async def keel_chat(tmp_path):
    """(base URL, gateway): auth off, with the routes above."""
    gateway = Gateway(chat_config(tmp_path))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


async def make_key(http, base: str, **fields) -> str:
    async with http.post(f"{base}/v1/keys", json={"name": "chat-test", **fields},
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["secret"]


def offered_routes(page: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="kc-routes">(.*?)</script>', page, re.DOTALL)
    assert found, "the page embeds its routes for chat.js"
    return json.loads(found.group(1))


def options(page: str) -> list[str]:
    return [html.unescape(v) for v in re.findall(r'<option value="([^"]*)"', page)]


async def test_the_route_list_is_the_models_the_key_may_use(keel_auth, http):
    base, _ = keel_auth
    secret = await make_key(http, base, models=["fake/echo", "support/guarded"],
                            surfaces=["console", "chat", "feedback"])
    async with http.get(f"{base}/console/chat", cookies={"keel_console": secret},
                        allow_redirects=False) as r:
        assert r.status == 200
        page = await r.text()
    assert options(page) == ["fake/echo", "support/guarded"]  # keel.yaml's order, filtered
    assert [r["name"] for r in offered_routes(page)] == ["fake/echo", "support/guarded"]
    assert "lacks the <code>chat</code>" not in page

    # The admin key sees every configured model.
    async with http.get(f"{base}/console/chat", cookies={"keel_console": ADMIN_KEY}) as r:
        page = await r.text()
    assert len(options(page)) == 10 and "fake/slow-100" in options(page)


async def test_a_key_that_may_not_chat_is_told_so(keel_auth, http):
    base, _ = keel_auth
    secret = await make_key(http, base, models=["fake/json"], surfaces=["console"])
    async with http.get(f"{base}/console/chat", cookies={"keel_console": secret}) as r:
        assert r.status == 200
        page = await r.text()
    assert options(page) == ["fake/json"]
    assert "lacks the <code>chat</code>" in page
    assert re.search(r'<textarea id="kc-input"[^>]*disabled', page)


async def test_without_a_key_the_chat_asks_to_sign_in(keel_auth, http):
    base, _ = keel_auth
    async with http.get(f"{base}/console/chat/embed?model=fake/echo", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"].startswith("/console/login?next=")


async def test_suggested_prompts_and_description_of_the_selected_route(keel_chat, http):
    base, _ = keel_chat
    async with http.get(f"{base}/console/chat?model=fake/echo") as r:
        assert r.status == 200
        page = await r.text()
    assert '<option value="fake/echo" selected>' in page
    assert "says back what you said" in page
    buttons = re.findall(r'<button type="button" class="kc-prompt">(.*?)</button>', page)
    assert buttons == ["What is &lt;b&gt;Keel&lt;/b&gt;?", "Say hello"]  # escaped, as text
    assert page.count("<h1") == 1 and "<title>Chat · Keel console</title>" in page
    assert "AI and may be wrong" in page
    route = next(r for r in offered_routes(page) if r["name"] == "fake/echo")
    assert route["suggested_prompts"] == ["What is <b>Keel</b>?", "Say hello"]
    assert route["description"] == "says back what you said"

    # Another route, without console settings: no prompts, no description; first is the default.
    async with http.get(f"{base}/console/chat?model=fake/json") as r:
        page = await r.text()
    assert '<option value="fake/json" selected>' in page
    assert not re.findall(r'class="kc-prompt"', page)
    async with http.get(f"{base}/console/chat") as r:
        assert '<option value="fake/echo" selected>' in await r.text()  # first in keel.yaml


async def test_an_unknown_model_is_a_404_page(keel_chat, http):
    base, _ = keel_chat
    for path in ("/console/chat?model=no/such", "/console/chat/embed?model=no/such"):
        async with http.get(base + path) as r:
            assert r.status == 404
            assert r.content_type == "text/html"
            text = await r.text()
            assert "There is no model &#39;no/such&#39; that this key may use" in text
            assert "Traceback" not in text


async def test_the_embed_page_is_the_chat_without_the_console(keel_chat, http):
    base, _ = keel_chat
    async with http.get(f"{base}/console/chat/embed?model=fake/echo") as r:
        assert r.status == 200
        page = await r.text()
    assert "<nav" not in page and "Console sections" not in page and "Sign out" not in page
    assert "console.css" not in page  # only chat.css and chat.js: what an app copies
    assert "/console/static/chat.css" in page and "/console/static/chat.js" in page
    assert 'id="kc-form"' in page and "Say hello" in page
    assert 'data-trace-base=""' in page  # no links into the console from an app's page
    async with http.get(f"{base}/console/chat") as r:
        full = await r.text()
    assert 'aria-label="Console sections"' in full
    assert 'data-trace-base="/console/traces/"' in full
    for asset in ("chat.js", "chat.css"):
        async with http.get(f"{base}/console/static/{asset}") as r:
            assert r.status == 200


async def test_changes_name_what_the_guardrails_redacted(keel_chat, http):
    base, _ = keel_chat
    async with http.post(f"{base}/v1/chat/completions", json={
            "model": "support/guarded", "stream": True,
            "messages": [{"role": "user", "content": "where is ORD-123456 and ORD-654321?"}]}) as r:
        assert r.status == 200
        assert r.headers["x-keel-guardrails"] == "topics=pass,regex=redact"
        trace_id = r.headers["x-keel-trace-id"]
        await r.read()
    async with http.get(f"{base}/console/chat/changes/{trace_id}") as r:
        assert r.status == 200
        found = await r.json()
    assert found == {"input": [{"guard": "regex", "action": "redact", "labels": {"ORDER_ID": 2}}],
                     "output": []}

    async with http.post(f"{base}/v1/chat/completions", json={
            "model": "support/guarded", "stream": True,
            "messages": [{"role": "user", "content": "tell me about forbidden-topic"}]}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "guardrail_blocked"
        assert r.headers["x-keel-trace-id"]  # the blocked request has a trace to open too

    for unknown in ("x", "0" * 24):
        async with http.get(f"{base}/console/chat/changes/{unknown}") as r:
            assert r.status == 404
