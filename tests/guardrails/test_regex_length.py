"""The `regex`, `denylist` and `length` guards, and how their options are checked at load."""

from __future__ import annotations

import pytest

from keel.config import load_config
from keel.errors import ConfigError
from keel.guardrails.base import GuardContext
from keel.guardrails.length import LengthGuard, LengthOptions, estimate_tokens
from keel.guardrails.regex import DenylistGuard, DenylistOptions, RegexGuard, RegexOptions


def ctx(stage="input", body=None, route=None) -> GuardContext:
    return GuardContext(stage=stage, body=body or {}, runtime=None, state={}, route=route)


async def test_regex_finds_each_pattern_with_its_label():
    guard = RegexGuard("r", RegexOptions(patterns={"ORDER": r"ORD-\d{4}", "TICKET": r"T#\d+"},
                                         action="redact"))
    text = "ORD-1234 and T#77 but not ord-1234"
    assert [(text[m.start:m.end], m.label) for m in guard.find(text)] == \
        [("ORD-1234", "ORDER"), ("T#77", "TICKET")]
    verdict = await guard.check(text, ctx())
    assert verdict.action == "redact" and verdict.reasons == ["found ORDER, TICKET"]
    assert (await guard.check("nothing here", ctx())).action == "pass"


def test_regex_ignore_case():
    guard = RegexGuard("r", RegexOptions(patterns={"ORDER": r"ORD-\d{4}"}, ignore_case=True))
    assert len(guard.find("ord-1234")) == 1


def test_a_bad_pattern_is_refused_when_options_load():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexOptions(patterns={"X": "("})


@pytest.mark.parametrize(("text", "found"), [
    ("We beat Acme Corp on price", ["Acme Corp"]),
    ("ACME   corp and acme", ["ACME   corp", "acme"]),
    ("acmes and macme and acme-corp", ["acme"]),  # whole words only ("acme" in "acme-corp")
    ("nothing to see", []),
])
def test_denylist_matches_whole_words_ignoring_case(text, found):
    guard = DenylistGuard("competitors", DenylistOptions(words=["acme", "acme corp"]))
    assert [text[m.start:m.end] for m in guard.find(text)] == found


def test_denylist_refuses_an_empty_word():
    with pytest.raises(ValueError, match="empty"):
        DenylistOptions(words=["ok", "  "])


async def test_length_counts_the_whole_request_at_the_input():
    guard = LengthGuard("length", LengthOptions(max_input_tokens=10))
    body = {"messages": [{"role": "system", "content": "x" * 40},
                         {"role": "user", "content": "y" * 8}]}
    verdict = await guard.check("y" * 8, ctx("input", body))
    assert verdict.action == "block"
    assert verdict.scores["tokens"] == 13  # ceil((40 + 1 + 8) / 4): system message included
    assert "more than the limit of 10" in verdict.reasons[0]
    short = {"messages": [{"role": "user", "content": "hi"}]}
    assert (await guard.check("hi", ctx("input", short))).action == "pass"


async def test_length_uses_the_providers_tokenizer_when_it_has_one():
    class Provider:
        @staticmethod
        def count_tokens(text):
            return len(text.split())

    class Route:
        provider = Provider()

    guard = LengthGuard("length", LengthOptions(max_output_tokens=3, action="flag"))
    verdict = await guard.check("one two three four", ctx("output", route=Route()))
    assert verdict.action == "flag" and verdict.scores["tokens"] == 4
    assert (await guard.check("one two three", ctx("output", route=Route()))).action == "pass"


def test_estimate_is_ceil_chars_over_four():
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


CONFIG = """
providers: {fake: {kind: fake}}
models:
  bot:
    provider: fake
    model: echo
    guardrails:
      input:
        - denylist: {words: [acme], name: competitors}
        - %s
"""


@pytest.mark.parametrize(("entry", "message"), [
    ("nope", "models.bot.guardrails.input.1: unknown guard kind 'nope'"),
    ("length: {max_input_tokens: 0}", "length.max_input_tokens: Input should be greater"),
    ("regex: {patterns: {X: '('}}", "not a valid regular expression"),
    ("denylist: {words: [a], colour: red}", "denylist.colour: unknown option"),
    ("length: {action: redact}", "length.action: Input should be 'block' or 'flag'"),
])
def test_a_bad_guard_entry_stops_start_up_with_its_path(tmp_path, entry, message):
    path = tmp_path / "keel.yaml"
    path.write_text(CONFIG % entry)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in err.value.message
    assert "keel.yaml" in err.value.message
