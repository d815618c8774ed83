"""The `pii` guard: each entity found with its span, hard negatives left alone, options, and its
precision and recall on the labelled set tests/data/guardrails/pii.jsonl."""

from __future__ import annotations

import builtins
import importlib.util
import json
import random
import socket
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.errors import ConfigError
from keel.guardrails.base import GuardContext
from keel.guardrails.pii import BUILTIN, PIIGuard, PIIOptions
from keel.guardrails.registry import GuardSpec, guard_class

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/guardrails/pii.jsonl"


def _generator():
    path = ROOT / "bench/data/make_pii_set.py"
    spec = importlib.util.spec_from_file_location("make_pii_set", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def guard(**options) -> PIIGuard:
    return PIIGuard("pii", PIIOptions(**options))


def found(text: str, **options) -> list[tuple[str, str]]:
    return [(m.label, text[m.start:m.end]) for m in guard(**options).find(text)]


@pytest.mark.parametrize("text, label, value", [
    ("write to carol.jones@example.com today", "EMAIL", "carol.jones@example.com"),
    ('send_mail(to="frank+news@mail.example.org")', "EMAIL", "frank+news@mail.example.org"),
    ("call (415) 555-2671 after six", "PHONE", "(415) 555-2671"),
    ("call +1 415 555 2671.", "PHONE", "+1 415 555 2671"),
    ("office +44 20 7946 0018, ask for Ann", "PHONE", "+44 20 7946 0018"),
    ("room 12 415-555-2671", "PHONE", "415-555-2671"),
    ("card 4111 1111 1111 1111 exp 04/27", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("amex 3782 822463 10005", "CREDIT_CARD", "3782 822463 10005"),
    ("card 5555-5555-5555-4444.", "CREDIT_CARD", "5555-5555-5555-4444"),
    ("IBAN DE89 3704 0044 0532 0130 00 EUR", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("iban GB82WEST12345698765432.", "IBAN", "GB82WEST12345698765432"),
    ("SSN: 123-45-6789.", "US_SSN", "123-45-6789"),
    ("ssn 536 22 1234 on file", "US_SSN", "536 22 1234"),
    ("server 192.168.1.20. is down", "IP_ADDRESS", "192.168.1.20"),
    ("ping 2001:db8::8a2e:370:7334 now", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ("localhost is ::1", "IP_ADDRESS", "::1"),
])
def test_each_entity_is_found_with_its_span(text, label, value):
    assert found(text) == [(label, value)]


@pytest.mark.parametrize("text", [
    "order 4539 1488 0343 6468 shipped",  # fails Luhn
    "tracking 9400111899223397",  # 16 digits, Luhn-valid, but no card network starts with 9
    "tracking 1000 0000 0000 0008",
    "on 2024-05-06, 05-06-2024, 12.05.2023, 2023/11/05 and 20240506",
    "meeting 06 05 2024 at 14:30:00",
    "version 1.2.3 and 10.0.0.1.5 and 1.2.3.4.5",
    "upgrade to v1.2.3.4 or version 4.2.1.0",
    "octets 256.1.1.300",
    "account DE00 3704 0044 0532 0130 00 rejected",  # bad IBAN checksum
    "account FI98 6643 2978 7662 57 rejected",  # bad IBAN; its tail is Luhn-valid
    "ids 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000",
    "ssn 078-05-1120 (the Woolworth card)",
    "bare nine digits 123456789",
    "npm install lodash@4.17.21 @types/node@20.1.0",
    "y = weights@inputs.T; out = x@w.transpose(0, 1)",
    "@app.route('/') and root@localhost",
    "MAC 00:1A:2B:3C:4D:5E, time 12:30:45, std::vector<int> a; Foo::Bar",
    "We sold 12500 units at $19.99 each.",
])
def test_hard_negatives_are_not_found(text):
    assert found(text) == []


def test_custom_patterns_and_entities_option():
    text = "employee E-123456 wrote from bob@example.com, card 4111111111111111"
    assert found(text, entities=["EMAIL"]) == [("EMAIL", "bob@example.com")]
    assert found(text, entities=[], patterns=[{"label": "employee_id", "regex": r"E-\d{6}"}]) == [
        ("EMPLOYEE_ID", "E-123456")]
    assert [label for label, _ in found(text, patterns=[{"label": "EMP", "regex": r"E-\d{6}"}])] \
        == ["EMP", "EMAIL", "CREDIT_CARD"]


def test_bad_options_are_refused():
    with pytest.raises(ValidationError, match="not a valid regex"):
        PIIOptions(patterns=[{"label": "X", "regex": "([a-z"}])
    with pytest.raises(ValidationError):
        PIIOptions(entities=["PASSPORT"])
    with pytest.raises(ValidationError):
        PIIOptions(action="rewrite")
    with pytest.raises(ValidationError):  # a typo in keel.yaml stops start-up
        GuardSpec.model_validate({"pii": {"entites": ["EMAIL"]}})


def test_person_needs_a_locally_installed_model():
    # No NER pipeline ships with Keel, and none is downloaded: asking for PERSON without one
    # stops start-up with what to install.
    with pytest.raises(ConfigError, match="never downloads"):
        guard(entities=["EMAIL", "PERSON"], ner_model="keel_test_no_such_pipeline")


async def test_check_turns_matches_into_the_configured_action():
    ctx = GuardContext(stage="input", body={}, runtime=None, state={})
    verdict = await guard().check("mail bob@example.com", ctx)
    assert (verdict.action, verdict.reasons, [m.label for m in verdict.matches]) == (
        "redact", ["found EMAIL"], ["EMAIL"])
    assert (await guard(action="block").check("ip 8.8.8.8", ctx)).action == "block"
    assert not (await guard().check("nothing personal here", ctx)).acted


def test_loaded_by_kind_from_keel_yaml():
    spec = GuardSpec.model_validate({"pii": {"action": "pseudonymize", "entities": ["IBAN"]}})
    assert guard_class(spec.kind) is PIIGuard
    assert spec.options.action == "pseudonymize" and spec.options.entities == ["IBAN"]
    # a stream must hold back at least the longest IBAN written in groups (34 + 8 spaces)
    assert PIIGuard("pii", spec.options).holdback >= 42


def _score(rows):
    counts = {label: [0, 0, 0] for label in BUILTIN}
    g = guard()
    for row in rows:
        gold = {(e["label"], e["start"], e["end"]) for e in row["entities"]}
        got = {(m.label, m.start, m.end) for m in g.find(row["text"])}
        for label, *_ in gold & got:
            counts[label][0] += 1
        for label, *_ in got - gold:
            counts[label][1] += 1
        for label, *_ in gold - got:
            counts[label][2] += 1
    return counts


def test_precision_and_recall_per_entity_on_the_labelled_set():
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(rows) >= 300 and sum(not r["label"] for r in rows) >= 150
    for label, (tp, fp, fn) in _score(rows).items():
        assert tp >= 30, label  # each entity is well represented
        # Measured 1.000 / 1.000 for every entity (docs/guards/pii.md); 0.97 leaves room for
        # one or two misses when the set is regenerated, and fails on any real regression.
        assert tp / (tp + fp) >= 0.97, (label, tp, fp)
        assert tp / (tp + fn) >= 0.97, (label, tp, fn)
    # every hard negative passes clean
    g = guard()
    assert [r["text"] for r in rows if not r["label"] and g.find(r["text"])] == []


def test_the_labelled_set_is_what_the_generator_makes():
    gen = _generator()
    rows = gen.generate(random.Random(9), 35, 170)
    assert [json.dumps(r) for r in rows] == DATA.read_text().splitlines()
    for row in rows:  # spans point at the values they label
        for e in row["entities"]:
            assert row["text"][e["start"]:e["end"]].strip() == row["text"][e["start"]:e["end"]]


def test_other_seeds_score_as_well():
    # The detector is not tuned to one file: fresh sets from other seeds score the same.
    rows = _generator().generate(random.Random(2026), 35, 170)
    for label, (tp, fp, fn) in _score(rows).items():
        assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (label, tp, fp, fn)


def test_find_is_pure_and_fast(monkeypatch):
    g = guard(patterns=[{"label": "EMP", "regex": r"E-\d{6}"}])
    prompt = _generator().two_kb_prompt()
    expected = g.find(prompt)
    assert {m.label for m in expected} == {"PHONE", "EMAIL", "IP_ADDRESS"}

    def no_io(*args, **kwargs):
        raise AssertionError("find() did I/O")

    monkeypatch.setattr(builtins, "open", no_io)
    monkeypatch.setattr(socket, "socket", no_io)
    start = time.perf_counter()
    for _ in range(50):
        assert g.find(prompt) == expected
    # ~0.3 ms a call measured; 20 ms a call only catches a pathological regression.
    assert (time.perf_counter() - start) / 50 < 0.02


# -- through a loopback Keel on the fake provider (`echo` answers with the last user message) --

async def _chat(session, base, text, **extra):
    body = {"model": "bot", "messages": [{"role": "user", "content": text}], **extra}
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        return r.status, await r.read(), r.headers


async def test_pseudonymised_pii_is_restored_in_the_answer_also_when_streamed(serve, session):
    base, _ = await serve({"input": [{"pii": {"action": "pseudonymize"}}]})
    text = "I am carol.jones@example.com, card 4111 1111 1111 1111, call (415) 555-2671"
    status, raw, headers = await _chat(session, base, text)
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == text
    assert headers["x-keel-guardrails"] == "pii=pseudonymize"
    status, raw, _ = await _chat(session, base, text, stream=True)
    assert status == 200, raw
    streamed = "".join(
        (c.get("delta") or {}).get("content") or ""
        for block in raw.split(b"\n\n") if block.startswith(b"data: {")
        for c in json.loads(block[6:]).get("choices") or ())
    assert streamed == text


async def test_redacted_pii_never_reaches_the_model(serve, session):
    base, _ = await serve({"input": [{"pii": {"entities": ["EMAIL", "IBAN"]}}]})
    text = "mail bob@example.com, IBAN DE89 3704 0044 0532 0130 00, ip 8.8.8.8"
    status, raw, _ = await _chat(session, base, text)
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == (
        "mail [EMAIL], IBAN [IBAN], ip 8.8.8.8")
