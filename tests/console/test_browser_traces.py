"""Traces in a real Chromium against `keel serve` (tests/console/conftest.py): chats sent
through the API show in the list (one arriving live while the page is open), a grounded trace
shows its conversation, sources and waterfall, and Replay puts the two answers side by side."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.console.conftest import screenshot

pytestmark = pytest.mark.browser


def post(url: str, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read()), dict(response.headers)


def chat(site: str, content: str, model: str = "fake/echo", **extra) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    _, headers = post(f"{site}/v1/chat/completions", body)
    return headers["x-keel-trace-id"]


def test_find_a_trace_watch_one_arrive_and_replay_it(page, console_site):
    grounded = chat(console_site, "How do I reset my password?", model="console/grounded",
                    seed=7, user="newcomer")
    post(f"{console_site}/v1/feedback", {"trace_id": grounded, "score": -1,
                                         "correction": "Mention the reset link expires."})
    echoed = chat(console_site, "Hello from the browser test")

    # A newcomer opens /console and lands on the list, newest first.
    page.goto("/console")
    page.wait_for_url("**/console/traces")
    assert page.title() == "Traces · Keel console"
    page.locator(f"#trace-{echoed}").wait_for(timeout=10_000)  # written within a second
    ids = page.locator("#trace-rows tr").evaluate_all("rows => rows.map(r => r.id)")
    assert ids.index(f"trace-{echoed}") < ids.index(f"trace-{grounded}")

    # Live: a request sent while the page is open appears at the top without a reload.
    live = page.locator(".live")
    live.wait_for()
    assert "Live" in live.inner_text()
    arrived = chat(console_site, "I arrive while you watch")
    page.locator(f"#trace-{arrived}").wait_for(timeout=10_000)
    assert page.locator("#trace-rows tr").first.get_attribute("id") == f"trace-{arrived}"
    page.get_by_role("button", name="Pause").click()
    assert "Paused" in live.inner_text()
    page.get_by_role("button", name="Resume").click()
    page.wait_for_timeout(300)
    screenshot(page, "traces")

    # The filter form is a GET: the URL holds it, and a search finds the grounded trace.
    page.get_by_label("Search").fill("reset my password")
    page.get_by_label("Search").press("Enter")
    page.wait_for_url(re.compile(r".*q=reset\+my\+password.*"))
    assert page.locator(f"#trace-{grounded}").count() == 1
    assert page.locator(f"#trace-{echoed}").count() == 0

    # Open it: conversation, sources with passages, the waterfall, feedback.
    page.locator(f"#trace-{grounded} td").first.get_by_role("link").click()
    page.wait_for_url(f"**/console/traces/{grounded}")
    assert page.locator("h1").inner_text() == f"Trace {grounded}"
    assert "How do I reset my password?" in page.locator(".msg.role-user").inner_text()
    assert page.locator(".msg.role-assistant").count() == 1
    names = page.locator(".waterfall .span-name").all_inner_texts()
    assert "knowledge.retrieve" in names and "provider" in names
    retrieve = page.locator(".waterfall li", has=page.get_by_text("knowledge.retrieve",
                                                                  exact=True))
    retrieve.locator("summary").click()  # opens the span: hits with scores and passages
    hits = retrieve.locator("table.hits tbody tr")
    assert hits.count() >= 1
    assert float(hits.first.locator("td.num").inner_text()) > 0
    assert "password" in hits.first.locator(".passage").inner_text().lower()
    assert "Mention the reset link expires." in page.locator("table.feedback").inner_text()

    # Replay: same seed, the two answers side by side, a link to the new trace.
    assert "Same seed (7)" in page.locator("form[hx-post]").inner_text()
    page.get_by_role("button", name="Replay").click()
    side = page.locator("#replay .side-by-side")
    side.wait_for(timeout=20_000)
    assert side.locator("section").count() == 2
    new_link = page.locator("#replay").get_by_role("link").first
    new_id = new_link.inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{24}", new_id) and new_id != grounded
    original, replay = side.locator(".msg.role-assistant").all_inner_texts()
    assert original == replay  # the fake model echoes: same request, same answer
    screenshot(page, "trace")

    new_link.click()
    page.wait_for_url(f"**/console/traces/{new_id}")
    assert "How do I reset my password?" in page.locator(".msg.role-user").inner_text()

    # On a phone nothing but the tables' own boxes scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    for url in (f"/console/traces/{grounded}", "/console/traces"):
        page.goto(url)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, url


def test_unknown_trace_is_a_page_not_a_stack(page):
    response = page.goto("/console/traces/ffffffffffffff")
    assert response.status == 404
    assert page.locator("h1").inner_text() == "Trace not found"
    page.get_by_role("link", name="Back to the traces").click()
    page.wait_for_url("**/console/traces")
