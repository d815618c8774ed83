"""The guardrails layer through a real loopback Keel on the fake provider: every action on the
input and the output, streams, ordering, concurrency, failures, the header, spans and metrics.

`fake/echo` answers with the last user message, so what the model saw comes back in the answer:
a redacted request is a redacted answer, and a pseudonymised one must come back restored.
"""

from __future__ import annotations

import json

import pytest

from keel.ops.trace_queries import get_trace
from tests.guardrails import fakes
from tests.openai_schema import assert_valid

pytestmark = pytest.mark.usefixtures("fake_guards")

ORDERS = {"regex": {"patterns": {"ORDER": r"ORD-\d{4}"}, "action": "pseudonymize"}}
CARD = {"regex": {"patterns": {"CREDIT_CARD": r"\b(?:\d[ -]?){15}\d\b"}, "action": "redact",
                  "max_match_chars": 24, "name": "cards"}}
CARD_NUMBER = "4111 1111 1111 1111"


def user(*texts: str) -> list[dict]:
    return [{"role": "user", "content": t} for t in texts]


async def chat(session, base, messages, **extra):
    body = {"model": "bot", "messages": messages, **extra}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        return r.status, await r.json(content_type=None), r.headers


async def stream(session, base, messages, **extra):
    """(status, events, headers): each SSE event as JSON, or "[DONE]"."""
    body = {"model": "bot", "messages": messages, "stream": True, **extra}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        raw = await r.read()
        if r.status != 200:
            return r.status, json.loads(raw), r.headers
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return r.status, events, r.headers


def streamed_text(events) -> str:
    return "".join((c.get("delta") or {}).get("content") or ""
                   for e in events if isinstance(e, dict) for c in e.get("choices") or ())


def answer(payload) -> str:
    return payload["choices"][0]["message"]["content"]


def guard_spans(gateway, trace_id: str) -> dict[str, list[dict]]:
    assert gateway.recorder.flush(10)
    spans: dict[str, list[dict]] = {}
    for span in get_trace(gateway.recorder.store, trace_id)["spans"]:
        if span["name"].startswith("guard."):
            spans.setdefault(span["name"], []).append(span["attrs"])
    return spans


def verdicts(gateway, **labels) -> float:
    value = gateway.runtime.metrics.registry.get_sample_value(
        "keel_guardrail_verdicts_total", labels)
    return value or 0.0


# -- input actions -----------------------------------------------------------------------------

async def test_pseudonymised_values_reach_the_model_as_placeholders_and_come_back(serve, session):
    base, gateway = await serve({
        "input": [ORDERS],
        "output": [{"test_judge": {"trigger": "<ORDER_", "name": "spy"}}],
    })
    status, payload, headers = await chat(
        session, base, user("first ORD-1111", "ORD-2222 then ORD-1111 and ORD-2222 again"))
    assert status == 200, payload
    # The model (echo) saw placeholders, stable across messages; the user gets the originals.
    seen = ("spy", "output", "<ORDER_2> then <ORDER_1> and <ORDER_2> again")
    assert seen in fakes.JudgeGuard.seen
    assert answer(payload) == "ORD-2222 then ORD-1111 and ORD-2222 again"
    assert headers["x-keel-guardrails"] == "regex=pseudonymize,spy=flag"
    assert_valid("CreateChatCompletionResponse", payload)


async def test_redact_masks_every_user_message_and_text_part(serve, session):
    base, _ = await serve({"input": [
        {"denylist": {"words": ["acme corp"], "action": "redact", "name": "competitors",
                      "label": "COMPETITOR"}}]})
    messages = [{"role": "user", "content": "Acme Corp is great"},
                {"role": "assistant", "content": "Acme Corp? (not a user message)"},
                {"role": "user", "content": [{"type": "text", "text": "compare with"},
                                             {"type": "text", "text": "ACME corp please"}]}]
    status, payload, headers = await chat(session, base, messages)
    assert status == 200, payload
    assert answer(payload) == "compare with [COMPETITOR] please"
    assert headers["x-keel-guardrails"] == "competitors=redact"


async def test_block_is_an_openai_shaped_400_naming_the_guard(serve, session):
    base, gateway = await serve({"input": [{"denylist": {"words": ["acme"], "name": "rivals"}}]})
    status, payload, headers = await chat(session, base, user("tell me about acme"))
    assert status == 400
    assert headers["x-keel-guardrails"] == "rivals=block"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["code"] == "guardrail_blocked"
    assert "'rivals'" in payload["error"]["message"]
    assert "acme" not in payload["error"]["message"].lower().replace("'rivals'", "")
    status, _, _ = await chat(session, base, user("tell me about something else"))
    assert status == 200
    assert verdicts(gateway, guard="rivals", stage="input", action="block") == 1
    assert verdicts(gateway, guard="rivals", stage="input", action="pass") == 1


async def test_block_with_a_refusal_is_a_content_filter_completion(serve, session):
    refusal = "I can't talk about other companies."
    base, _ = await serve({"input": [{"denylist": {"words": ["acme"], "refusal": refusal}}]})
    status, payload, headers = await chat(session, base, user("acme?"))
    assert status == 200
    assert answer(payload) == refusal
    assert payload["choices"][0]["finish_reason"] == "content_filter"
    assert headers["x-keel-guardrails"] == "denylist=block"
    assert_valid("CreateChatCompletionResponse", payload)

    status, events, headers = await stream(session, base, user("acme?"))
    assert status == 200 and events[-1] == "[DONE]"
    assert streamed_text(events) == refusal
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert headers["x-keel-guardrails"] == "denylist=block"


async def test_rewrite_replaces_the_last_user_message_and_says_so(serve, session):
    base, _ = await serve({"input": [
        {"test_judge": {"action": "rewrite", "trigger": "violent", "text": "a calm request",
                        "name": "rewriter"}}]})
    status, payload, headers = await chat(session, base, user("hi", "a violent request"))
    assert status == 200
    assert answer(payload) == "a calm request"
    assert "adjusted" in headers["x-keel-guardrails-notice"]
    assert headers["x-keel-guardrails"] == "rewriter=rewrite"
    status, payload, headers = await chat(session, base, user("a gentle one"))
    assert answer(payload) == "a gentle one" and "x-keel-guardrails-notice" not in headers


async def test_flag_records_only(serve, session):
    base, gateway = await serve({"input": [{"test_judge": {"name": "watch"}}]})
    status, payload, headers = await chat(session, base, user("a bad idea"))
    assert status == 200 and answer(payload) == "a bad idea"
    assert headers["x-keel-guardrails"] == "watch=flag"
    (span,) = guard_spans(gateway, headers["x-keel-trace-id"])["guard.watch"]
    assert span["stage"] == "input" and span["action"] == "flag"
    assert span["reasons"] == ["mentions bad"] and span["scores"] == {"risk": 0.9}
    assert span["latency_ms"] >= 0
    assert verdicts(gateway, guard="watch", stage="input", action="flag") == 1


async def test_spans_carry_labels_and_counts_never_the_matched_text(serve, session):
    base, gateway = await serve({"input": [ORDERS]})
    _, _, headers = await chat(session, base, user("ORD-1234 and ORD-1234 and ORD-9876"))
    (span,) = guard_spans(gateway, headers["x-keel-trace-id"])["guard.regex"]
    assert span["labels"] == {"ORDER": 3}
    assert "ORD-" not in json.dumps(span)


async def test_judges_see_the_last_user_message_detectors_every_one(serve, session):
    base, _ = await serve({"input": [
        {"test_judge": {"name": "last"}},
        {"test_judge": {"name": "every", "messages": "all"}},
        {"regex": {"patterns": {"X": "secret"}, "action": "redact"}}]})
    status, payload, _ = await chat(session, base, user("one secret", "two"))
    assert status == 200
    seen = {(name, text) for name, _, text in fakes.JudgeGuard.seen}
    assert seen == {("last", "two"), ("every", "one secret\n\ntwo")}


# -- ordering and concurrency ------------------------------------------------------------------

async def test_independent_input_guards_run_concurrently(serve, session):
    base, _ = await serve({"input": [{"test_slow": {"name": "a"}}, {"test_slow": {"name": "b"}},
                                     {"test_slow": {"name": "c"}}]})
    status, _, headers = await chat(session, base, user("hi"))
    assert status == 200
    assert fakes.SlowGuard.most == 3  # all three were running at once
    assert headers["x-keel-guardrails"] == "a=pass,b=pass,c=pass"


async def test_without_concurrency_guards_run_one_by_one_each_on_the_adjusted_text(serve, session):
    base, _ = await serve({"concurrency": False, "input": [
        {"test_slow": {"name": "a", "delay_s": 0.05}},
        {"test_slow": {"name": "b", "delay_s": 0.05}},
        {"regex": {"patterns": {"ORDER": r"ORD-\d{4}"}, "action": "redact"}},
        {"test_judge": {"trigger": "[ORDER]", "name": "after"}}]})
    status, payload, headers = await chat(session, base, user("about ORD-1234"))
    assert status == 200
    assert fakes.SlowGuard.most == 1
    assert ("after", "input", "about [ORDER]") in fakes.JudgeGuard.seen
    assert headers["x-keel-guardrails"] == "a=pass,b=pass,regex=redact,after=flag"


async def test_the_first_blocking_guard_in_the_configured_order_decides(serve, session):
    base, _ = await serve({"input": [
        {"test_judge": {"name": "first", "action": "flag"}},
        {"test_judge": {"name": "second", "action": "block"}},
        {"test_judge": {"name": "third", "action": "block"}}]})
    status, payload, _ = await chat(session, base, user("bad"))
    assert status == 400 and "'second'" in payload["error"]["message"]


async def test_a_rewrite_guard_sees_the_request_as_the_other_guards_left_it(serve, session):
    base, _ = await serve({"input": [
        {"test_judge": {"action": "rewrite", "trigger": "[ORDER]", "text": "rewritten"}},
        {"regex": {"patterns": {"ORDER": r"ORD-\d{4}"}, "action": "redact"}}]})
    status, payload, _ = await chat(session, base, user("about ORD-1234"))
    assert ("test_judge", "input", "about [ORDER]") in fakes.JudgeGuard.seen
    assert answer(payload) == "rewritten"


# -- failures ----------------------------------------------------------------------------------

async def test_a_failing_block_guard_fails_closed(serve, session):
    base, gateway = await serve({"input": [{"test_fail": {"name": "fragile"}}]})
    status, payload, headers = await chat(session, base, user("hi"))
    assert status == 503
    assert headers["x-keel-guardrails"] == "fragile=block"
    assert payload["error"]["code"] == "guardrail_error"
    message = payload["error"]["message"]
    assert "'fragile'" in message and "RuntimeError" in message
    assert "model is down" not in payload["error"]["message"]  # details stay on the trace
    assert verdicts(gateway, guard="fragile", stage="input", action="block") == 1


@pytest.mark.parametrize("options", [{"action": "flag"}, {"action": "block", "on_error": "open"}],
                         ids=["flag-guard", "on_error-open"])
async def test_a_failing_guard_that_fails_open_lets_the_request_through(serve, session, options):
    base, gateway = await serve({"input": [{"test_fail": {"name": "fragile", **options}}]})
    status, payload, headers = await chat(session, base, user("hi"))
    assert status == 200 and answer(payload) == "hi"
    assert headers["x-keel-guardrails"] == "fragile=error"
    (span,) = guard_spans(gateway, headers["x-keel-trace-id"])["guard.fragile"]
    assert span["action"] == "pass" and "model is down" in span["error"]


async def test_a_flag_guard_can_be_made_to_fail_closed(serve, session):
    base, _ = await serve({"input": [{"test_fail": {"action": "flag", "on_error": "closed"}}]})
    status, payload, _ = await chat(session, base, user("hi"))
    assert status == 503 and payload["error"]["code"] == "guardrail_error"


# -- output actions ----------------------------------------------------------------------------

async def test_output_redact_and_block(serve, session):
    base, _ = await serve({"output": [CARD, {"denylist": {"words": ["forbidden"]}}]})
    status, payload, headers = await chat(session, base, user(f"card {CARD_NUMBER} ok"))
    assert status == 200 and answer(payload) == "card [CREDIT_CARD] ok"
    assert headers["x-keel-guardrails"] == "cards=redact,denylist=pass"
    status, payload, _ = await chat(session, base, user("a forbidden word"))
    assert status == 400 and payload["error"]["code"] == "guardrail_blocked"
    assert "answer" in payload["error"]["message"] and "'denylist'" in payload["error"]["message"]


async def test_output_repair_asks_again_with_the_problem(serve, session):
    base, gateway = await serve({"output": [
        {"test_judge": {"action": "repair", "trigger": "not valid JSON",
                        "text": "the answer is not JSON", "name": "shape"}}]},
        model="bad-json-once")
    status, payload, headers = await chat(session, base, user("give me JSON"))
    assert status == 200, payload
    json.loads(answer(payload))
    assert headers["x-keel-guardrails"] == "shape=repair"
    spans = guard_spans(gateway, headers["x-keel-trace-id"])
    assert [s["action"] for s in spans["guard.shape"]] == ["repair", "pass"]
    assert spans["guard.shape.repair"][0]["attempt"] == 1
    assert payload["usage"]["prompt_tokens"] > 3  # both calls counted


async def test_output_repair_gives_up_after_its_attempts(serve, session):
    base, gateway = await serve({"output": [
        {"test_judge": {"action": "repair", "trigger": "not valid JSON", "attempts": 2,
                        "name": "shape"}}]}, model="bad-json")
    status, payload, headers = await chat(session, base, user("give me JSON"))
    assert status == 502
    assert payload["error"]["code"] == "guardrail_repair_failed"
    message = payload["error"]["message"]
    assert "'shape'" in message and "2 repair attempt" in message
    assert verdicts(gateway, guard="shape", stage="output", action="repair") == 3


async def test_the_same_kind_on_both_stages_is_two_entries_of_the_header(serve, session):
    base, _ = await serve({"input": [ORDERS], "output": [
        {"regex": {"patterns": {"CODE": r"\bX\d\b"}, "action": "redact"}}]})
    status, payload, headers = await chat(session, base, user("ORD-1234 and X1"))
    assert answer(payload) == "ORD-1234 and [CODE]"
    assert headers["x-keel-guardrails"] == "regex=pseudonymize,regex@output=redact"


async def test_several_choices_are_refused_with_output_guards(serve, session):
    base, _ = await serve({"output": [CARD]})
    status, payload, _ = await chat(session, base, user("hi"), n=2)
    assert status == 400 and payload["error"]["param"] == "n"


# -- streams -----------------------------------------------------------------------------------

async def test_a_card_split_across_stream_chunks_is_still_redacted(serve, session):
    base, gateway = await serve({"output": [CARD]})
    # The echo streams word by word: the card number arrives in four chunks.
    status, events, headers = await stream(
        session, base, user(f"your card is {CARD_NUMBER} thanks"))
    assert status == 200 and events[-1] == "[DONE]"
    assert streamed_text(events) == "your card is [CREDIT_CARD] thanks"
    assert "1111" not in json.dumps(events)
    for event in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", event)
    (span,) = guard_spans(gateway, headers["x-keel-trace-id"])["guard.cards"]
    assert span["action"] == "redact" and span["labels"] == {"CREDIT_CARD": 1}


async def test_placeholders_are_restored_in_a_stream(serve, session):
    base, _ = await serve({"input": [ORDERS]})
    status, events, headers = await stream(session, base, user("track ORD-1234 and ORD-5678"))
    assert status == 200 and events[-1] == "[DONE]"
    assert streamed_text(events) == "track ORD-1234 and ORD-5678"
    assert headers["x-keel-guardrails"] == "regex=pseudonymize"


async def test_a_block_detector_ends_the_stream_with_an_error_event(serve, session):
    base, gateway = await serve({"output": [{"denylist": {"words": ["forbidden"]}}]})
    words = " ".join(f"w{i}" for i in range(30))
    status, events, headers = await stream(session, base, user(f"{words} forbidden more"))
    assert status == 200  # the headers were out already
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "guardrail_blocked"
    assert "'denylist'" in events[-1]["error"]["message"]
    assert streamed_text(events).startswith("w0 w1")  # what passed before the match
    assert "forbidden" not in streamed_text(events)
    assert gateway.recorder.flush(10)
    trace = get_trace(gateway.recorder.store, headers["x-keel-trace-id"])
    assert trace["status"] == 400 and trace["error"]["code"] == "guardrail_blocked"


async def test_judges_on_a_stream_run_at_the_end_and_only_flag(serve, session):
    base, gateway = await serve({"output": [{"test_judge": {"action": "block", "name": "late"}}]})
    status, events, headers = await stream(session, base, user("a bad answer"))
    assert status == 200 and events[-1] == "[DONE]"
    assert streamed_text(events) == "a bad answer"
    assert ("late", "output", "a bad answer") in fakes.JudgeGuard.seen
    (span,) = guard_spans(gateway, headers["x-keel-trace-id"])["guard.late"]
    assert span["action"] == "flag" and span["configured_action"] == "block"
    assert span["streamed"] is True


async def test_input_block_on_a_stream_is_a_plain_400(serve, session):
    base, _ = await serve({"input": [{"denylist": {"words": ["acme"]}}]})
    status, payload, _ = await stream(session, base, user("acme"))
    assert status == 400 and payload["error"]["code"] == "guardrail_blocked"


async def test_a_failing_detector_on_a_stream_fails_closed_in_the_stream(serve, session):
    base, _ = await serve({"output": [{"test_bad_find": {"name": "broken"}}]})
    status, events, _ = await stream(session, base, user("hello there"))
    assert status == 200 and "[DONE]" not in events
    assert events[-1]["error"]["code"] == "guardrail_error"


# -- a real `keel serve`, its keel.yaml and the official SDK ------------------------------------

SERVER_CONFIG = """
providers: {fake: {kind: fake}}
models:
  bot:
    provider: fake
    model: echo
    guardrails:
      input:
        - regex: {patterns: {ORDER: "ORD-\\\\d{4}"}, action: pseudonymize}
        - denylist: {words: [acme corp], action: redact, name: competitors}
        - length: {max_input_tokens: 200}
      output:
        - denylist: {words: [forbidden], name: banned}
"""


def test_guardrails_from_keel_yaml_on_a_real_server_with_the_sdk(tmp_path):
    import openai

    from tests.servers import keel_server

    with keel_server(tmp_path, SERVER_CONFIG) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="bot", messages=user("Is ORD-1234 from Acme Corp here?"))
        completion = raw.parse()
        assert completion.choices[0].message.content == "Is ORD-1234 from [DENYLIST] here?"
        assert raw.headers["x-keel-guardrails"] == \
            "regex=pseudonymize,competitors=redact,length=pass,banned=pass"

        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="bot", messages=user("x " * 1000))
        assert err.value.code == "guardrail_blocked" and "'length'" in err.value.message

        chunks = client.chat.completions.create(
            model="bot", stream=True,
            messages=user("ORD-1234 is fine, and so is a long sentence of words; this is "
                          "forbidden"))
        seen = []
        with pytest.raises(openai.APIError, match="'banned'"):
            for chunk in chunks:
                seen.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        assert "".join(seen).startswith("ORD-1234 is")
        assert "forbidden" not in "".join(seen)


async def test_verdicts_are_counted_in_metrics_by_guard_stage_and_action(serve, session):
    base, _ = await serve({"input": [{"denylist": {"words": ["acme"], "name": "rivals"}}],
                           "output": [CARD]})
    await chat(session, base, user("acme"))
    await chat(session, base, user(f"card {CARD_NUMBER}"))
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    lines = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines()
             if line.startswith("keel_guardrail_verdicts_total{")}
    assert lines == {
        'keel_guardrail_verdicts_total{action="block",guard="rivals",stage="input"}': "1.0",
        'keel_guardrail_verdicts_total{action="pass",guard="rivals",stage="input"}': "1.0",
        'keel_guardrail_verdicts_total{action="redact",guard="cards",stage="output"}': "1.0",
    }


async def test_the_layer_can_be_listed_in_a_pipeline(tmp_path, session):
    from aiohttp.test_utils import TestServer

    from keel.api import create_app
    from keel.config import KeelConfig, ModelConfig, ProviderConfig
    from keel.gateway import Gateway

    config = KeelConfig(
        state_dir=tmp_path, providers={"fake": ProviderConfig(kind="fake")},
        models={"bot": ModelConfig(provider="fake", model="echo", pipeline=[
            {"guardrails": {"input": [{"denylist": {"words": ["acme"], "action": "redact"}}]}},
            "json_mode"])})
    server = TestServer(create_app(Gateway(config)), host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        status, payload, headers = await chat(session, base, user("acme rocks"))
    finally:
        await server.close()
    assert status == 200 and answer(payload) == "[DENYLIST] rocks"
    assert headers["x-keel-guardrails"] == "denylist=redact"
