"""The reference chat in a real Chromium against `keel serve` (tests/console/conftest.py):
streaming, stop, regenerate, edit and resend, feedback, citations, guardrails, errors, a phone."""

from __future__ import annotations

import json
import re

import pytest

from tests.console.conftest import screenshot

pytestmark = pytest.mark.browser

LONG = ("Tell me a story about a lighthouse keeper who counted every ship that passed "
        "the rocks at night and wrote each name down")  # 22 words: 3.3 s at 150 ms a word


def answers(page):
    return page.locator("article.kc-turn.assistant")


def users(page):
    return page.locator(".kc-turn.user")


def open_chat(page, model: str):
    page.goto(f"/console/chat?model={model}")
    page.wait_for_selector("#kc-input")


def send(page, text: str):
    page.fill("#kc-input", text)
    page.press("#kc-input", "Enter")  # Enter sends


def wait_answered(page, n: int, timeout: float = 20_000):
    """Until the n-th answer (1-based) has finished: its actions row is filled in."""
    answers(page).nth(n - 1).locator(".kc-row > *").first.wait_for(timeout=timeout)
    page.wait_for_function("document.getElementById('kc-stop').hidden", timeout=timeout)


def test_streaming_stop_regenerate_and_edit(page):
    open_chat(page, "fake/slow-150")
    assert "one word every 150 ms" in page.inner_text("#kc-description")
    send(page, LONG)
    bubble = answers(page).nth(0).locator(".kc-bubble")
    # Tokens arrive as they are generated: some words now, more a moment later, not all yet.
    page.wait_for_function(
        "document.querySelector('article.kc-turn.assistant .kc-bubble').textContent"
        ".split(' ').length >= 3")
    first = bubble.inner_text()
    assert page.is_visible("#kc-stop")
    assert "answering" in page.inner_text("#kc-status")
    page.wait_for_timeout(600)
    second = bubble.inner_text()
    assert len(second) > len(first) and LONG.startswith(second.strip())
    assert second.strip() != LONG

    page.click("#kc-stop")
    wait_answered(page, 1)
    stopped = bubble.inner_text().strip()
    assert stopped and LONG.startswith(stopped) and stopped != LONG  # the partial answer stays
    assert answers(page).nth(0).locator(".kc-tag.stopped").inner_text() == "stopped"
    assert "Stopped" in page.inner_text("#kc-status")
    page.wait_for_timeout(400)
    assert bubble.inner_text().strip() == stopped  # nothing more arrives after Stop

    # Regenerate: the same history again, the answer replaced, this time to the end.
    answers(page).nth(0).get_by_role("button", name="Regenerate this answer").click()
    wait_answered(page, 1)
    assert answers(page).count() == 1
    assert answers(page).nth(0).locator(".kc-bubble").inner_text().strip() == LONG
    assert answers(page).nth(0).locator(".kc-tag.stopped").count() == 0

    # Esc stops too (keyboard only).
    send(page, "one two three four five six seven eight nine ten eleven twelve")
    page.wait_for_function(
        "document.querySelectorAll('article.kc-turn.assistant')[1]?.querySelector('.kc-bubble')"
        ".textContent.length > 0")
    page.keyboard.press("Escape")
    wait_answered(page, 2)
    assert answers(page).nth(1).locator(".kc-tag.stopped").count() == 1
    assert answers(page).nth(0).locator(".kc-regen").is_hidden()  # only the last regenerates

    # Edit the first message and resend: everything after it goes, the new answer follows it.
    users(page).nth(0).get_by_role("button", name="Edit and resend this message").click()
    page.fill("textarea[aria-label='Edit your message']", "edited first question")
    page.press("textarea[aria-label='Edit your message']", "Enter")
    wait_answered(page, 1)
    assert users(page).count() == 1 and answers(page).count() == 1
    assert users(page).nth(0).inner_text().startswith("You\nedited first question")
    assert answers(page).nth(0).locator(".kc-bubble").inner_text().strip() == "edited first question"


def test_thumbs_down_with_a_correction_is_stored_on_the_trace(page, console_site):
    open_chat(page, "fake/echo")
    send(page, "What is the capital of Australia?")
    wait_answered(page, 1)
    answer = answers(page).nth(0)
    href = answer.get_by_role("link", name="view trace").get_attribute("href")
    trace_id = href.rsplit("/", 1)[1]
    assert re.fullmatch(r"[0-9a-z]{8,32}", trace_id)

    answer.get_by_role("button", name="Bad answer").click()
    assert answer.get_by_role("button", name="Bad answer").get_attribute("aria-pressed") == "true"
    page.get_by_label("What should the answer have been? (optional correction)").fill("Canberra")
    page.get_by_role("button", name="Send feedback").click()
    page.wait_for_selector(".kc-saved")
    assert "with correction" in page.inner_text(".kc-saved")

    stored = page.request.get(f"/v1/feedback?trace_id={trace_id}").json()["data"]
    assert [(f["score"], f["correction"]) for f in stored] == [(-1, "Canberra")]

    # "view trace" opens the trace page, whose feedback section shows it.
    answer.get_by_role("link", name="view trace").click()
    page.wait_for_url(f"**/console/traces/{trace_id}")
    section = page.locator("section", has=page.get_by_role("heading", name="Feedback"))
    assert "Canberra" in section.inner_text()


def test_a_suggested_prompt_sends_and_a_grounded_answer_cites_its_sources(page):
    open_chat(page, "console/grounded")
    page.get_by_role("button", name="How do I reset my password?").click()
    wait_answered(page, 1, timeout=60_000)
    assert users(page).nth(0).locator(".kc-bubble").inner_text() == "How do I reset my password?"
    sources = answers(page).nth(0).locator(".kc-sources")
    assert sources.locator("h3").inner_text().startswith("Sources (")
    first = sources.locator("li").first
    assert first.locator("summary").inner_text().startswith("[1]")
    assert not first.locator("blockquote").is_visible()  # the passage opens on demand
    first.locator("summary").click()
    passage = first.locator("blockquote").inner_text()
    assert first.locator("blockquote").is_visible() and "password" in passage.lower()
    assert page.is_visible("#kc-ai-notice")
    screenshot(page, "chat")


def test_blocked_and_redacted_messages_say_so(page):
    open_chat(page, "console/guarded")
    send(page, "tell me about forbidden-topic please")
    wait_answered(page, 1)
    blocked = answers(page).nth(0).locator(".kc-guard.blocked")
    assert "Your message was blocked before it reached the model" in blocked.inner_text()
    assert "blocked by guardrail 'topics'" in blocked.inner_text()

    # Fix it by editing: the blocked turn goes, the redacted one is explained.
    users(page).nth(0).get_by_role("button", name="Edit and resend this message").click()
    page.fill("textarea[aria-label='Edit your message']", "where is my order ORD-123456 now")
    page.press("textarea[aria-label='Edit your message']", "Enter")
    wait_answered(page, 1)
    note = answers(page).nth(0).locator(".kc-guard")
    page.wait_for_function(
        "document.querySelector('article.kc-turn.assistant .kc-guard').textContent"
        ".includes('ORDER_ID redacted')")
    assert note.inner_text() == ("Your message was changed before it reached the model: "
                                 "ORDER_ID redacted.")
    assert "ORD-123456" not in answers(page).nth(0).locator(".kc-bubble").inner_text()


def test_an_error_is_shown_inline_with_retry(page):
    calls = []

    def flaky(route):
        calls.append(route.request.post_data)
        if len(calls) == 1:
            route.fulfill(status=503, content_type="application/json", body=json.dumps(
                {"error": {"message": "upstream unavailable", "type": "server_error",
                           "code": "upstream_error"}}))
        else:
            route.continue_()

    page.route("**/v1/chat/completions", flaky)
    open_chat(page, "fake/echo")
    send(page, "hello there")
    error = answers(page).nth(0).locator(".kc-error")
    error.wait_for()
    assert "(503): upstream unavailable" in error.inner_text()
    error.get_by_role("button", name="Retry").click()
    wait_answered(page, 1)
    assert answers(page).count() == 1
    assert answers(page).nth(0).locator(".kc-bubble").inner_text().strip() == "hello there"
    assert json.loads(calls[0])["messages"] == json.loads(calls[1])["messages"]


def test_the_chat_on_a_phone(chromium, console_site):
    context = chromium.new_context(viewport={"width": 390, "height": 844}, base_url=console_site)
    page = context.new_page()
    try:
        open_chat(page, "console/grounded")
        page.get_by_role("button", name="How do I reset my password?").click()
        wait_answered(page, 1, timeout=60_000)
        answers(page).nth(0).locator(".kc-sources summary").first.click()
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390
        screenshot(page, "chat-mobile")
    finally:
        context.close()


def test_the_embed_page_chats_without_the_console_nav(page):
    page.goto("/console/chat/embed?model=fake/echo")
    assert page.locator("nav").count() == 0
    send(page, "embedded hello")
    wait_answered(page, 1)
    assert answers(page).nth(0).locator(".kc-bubble").inner_text().strip() == "embedded hello"
    assert answers(page).nth(0).get_by_role("link", name="view trace").count() == 0
    assert answers(page).nth(0).get_by_role("button", name="Good answer").count() == 1


def sse(*chunks) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_tool_runs_are_collapsible_steps_and_markup_stays_text(page):
    # The stream a tools route sends (keel/grounding/tools/stream.py: `tool_runs` on the finish
    # chunk), answered here by the browser so no tool needs configuring.
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "echo"}
    body = sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "It is <b>sunny</b> in `Oslo`."}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "tool_runs": [{"name": "weather", "arguments": '{"city": "Oslo"}', "ok": True,
                        "duration_ms": 12.5},
                       {"name": "forecast", "arguments": "{}", "ok": False, "duration_ms": 3,
                        "error": "timeout"}]})
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, body=body, headers={"Content-Type": "text/event-stream",
                                        "x-keel-trace-id": "0123456789abcdef01234567"}))
    open_chat(page, "fake/echo")
    send(page, "weather in Oslo?")
    wait_answered(page, 1)
    answer = answers(page).nth(0)
    assert answer.locator(".kc-bubble b").count() == 0  # the model's markup is text
    assert answer.locator(".kc-bubble").inner_text() == "It is <b>sunny</b> in Oslo."
    assert answer.locator(".kc-bubble code").inner_text() == "Oslo"
    tools = answer.locator("details.kc-tools")
    assert tools.locator("> summary").inner_text() == "Ran 2 tool steps"
    assert not tools.locator("pre").first.is_visible()
    tools.locator("> summary").click()
    steps = tools.locator("li > details > summary")
    assert steps.all_inner_texts() == ["Step 1: weather — ok · 13 ms",
                                       "Step 2: forecast — failed · 3 ms"]
    steps.nth(0).click()
    assert '"city": "Oslo"' in tools.locator("pre").first.inner_text()
