"""Signing in to the console in a real browser, against a `keel serve` with auth on."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.console.conftest import CONSOLE_CONFIG, screenshot
from tests.servers import keel_server

ADMIN_KEY = "sk-admin-browser-sign-in-0123456789"


@pytest.fixture(scope="module")
def secured_site(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("console-secured")
    with keel_server(workdir, CONSOLE_CONFIG, env={"KEEL_ADMIN_KEY": ADMIN_KEY}) as base:
        yield base.removesuffix("/v1")


def chat(base: str, key: str, text: str) -> str:
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "fake/echo", "messages": [{"role": "user", "content": text}]})
        .encode(), headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["x-keel-trace-id"]


@pytest.mark.browser
def test_sign_in_with_the_admin_key_then_chat_and_sign_out(chromium, secured_site):
    trace_id = chat(secured_site, ADMIN_KEY, "hello from before signing in")
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{secured_site}/console")
        page.wait_for_url(re.compile(r"/console/login\?next="))
        assert page.locator("h1").inner_text() == "Sign in to the Keel console"
        screenshot(page, "sign-in")
        page.get_by_label("API key").fill("sk-not-a-key")
        page.keyboard.press("Enter")
        assert "incorrect api key" in page.get_by_role("alert").inner_text().lower()
        page.get_by_label("API key").fill(ADMIN_KEY)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/console/traces"))
        page.get_by_role("link", name=re.compile(trace_id[:12])).first.click()
        page.wait_for_url(re.compile(f"/console/traces/{trace_id}"))
        assert "hello from before signing in" in page.locator("main").inner_text()

        # The chat's own requests carry the cookie (with the console header) to the API.
        page.goto(f"{secured_site}/console/chat?model=fake/echo")
        page.get_by_role("textbox").first.fill("signed-in chat")
        page.keyboard.press("Enter")
        page.get_by_text("signed-in chat", exact=True).nth(1).wait_for()

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r"/console/login"))
        page.goto(f"{secured_site}/console/traces")
        page.wait_for_url(re.compile(r"/console/login\?next="))
    finally:
        context.close()
