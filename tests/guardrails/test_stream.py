"""Masking and restoring on a stream, at every possible chunk boundary."""

from __future__ import annotations

import pytest

from keel.errors import GuardrailBlocked
from keel.guardrails.regex import DenylistGuard, DenylistOptions, RegexGuard, RegexOptions
from keel.guardrails.stream import StreamMasker, StreamRestorer
from keel.guardrails.vault import Vault

CARD = RegexGuard("cards", RegexOptions(
    patterns={"CREDIT_CARD": r"\b(?:\d[ -]?){15}\d\b"}, action="redact", max_match_chars=24))
TEXT = "Your card 4111 1111 1111 1111 is on file; thanks."
MASKED = "Your card [CREDIT_CARD] is on file; thanks."


def run(masker: StreamMasker, pieces: list[str]) -> str:
    return "".join(masker.feed(p) for p in pieces) + masker.flush()


def splits(text: str, step: int = 1):
    """Every way to cut `text` in two, and a few in many pieces."""
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]
    for size in (1, 2, 3, 5, 7):
        yield [text[j:j + size] for j in range(0, len(text), size)]


@pytest.mark.parametrize("pieces", list(splits(TEXT)), ids=str)
def test_a_card_split_across_chunks_is_still_redacted(pieces):
    masker = StreamMasker([(CARD.find, "redact", CARD.holdback)])
    assert run(masker, pieces) == MASKED
    assert [m.label for m in masker.found[0]] == ["CREDIT_CARD"]


def test_only_the_holdback_is_kept_back():
    masker = StreamMasker([(CARD.find, "redact", CARD.holdback)])
    text = "x" * 100
    out = masker.feed(text)
    assert out == text[:100 - CARD.holdback]  # the rest is sent at once
    assert masker.flush() == text[100 - CARD.holdback:]


def test_no_detector_holds_nothing_back():
    masker = StreamMasker([])
    assert masker.feed("hello ") == "hello "


def test_a_word_cut_by_the_emitted_part_is_not_a_denylist_match():
    # "xacme" must not match `acme` on a word boundary after the stream emitted "x".
    guard = DenylistGuard("d", DenylistOptions(words=["acme"], action="redact"))
    masker = StreamMasker([(guard.find, "redact", guard.holdback)])
    text = "y" * 40 + "xacme and acme."
    for i in range(len(text) + 1):
        masker = StreamMasker([(guard.find, "redact", guard.holdback)])
        assert run(masker, [text[:i], text[i:]]) == "y" * 40 + "xacme and [DENYLIST]."


@pytest.mark.parametrize("pieces", list(splits(TEXT)), ids=str)
def test_a_block_detector_stops_the_stream_wherever_the_match_is_cut(pieces):
    def on_block(i, matches):
        raise GuardrailBlocked(f"blocked by {i}: {[m.label for m in matches]}")

    masker = StreamMasker([(CARD.find, "block", CARD.holdback)], on_block=on_block)
    sent = []
    with pytest.raises(GuardrailBlocked, match="CREDIT_CARD"):
        for p in pieces:
            sent.append(masker.feed(p))
        sent.append(masker.flush())
    assert "4111" not in "".join(sent)


def test_two_detectors_mask_overlapping_matches_once():
    digits = RegexGuard("digits", RegexOptions(patterns={"NUMBER": r"\d{4}"}, action="redact"))
    masker = StreamMasker([(CARD.find, "redact", CARD.holdback),
                           (digits.find, "redact", digits.holdback)])
    assert run(masker, [TEXT]) == MASKED


def vault_with(*pairs) -> tuple[Vault, list[str]]:
    vault = Vault()
    return vault, [vault.placeholder(label, value) for label, value in pairs]


def test_the_vault_gives_the_same_value_the_same_placeholder():
    vault, names = vault_with(("EMAIL", "a@x.io"), ("EMAIL", "b@x.io"), ("EMAIL", "a@x.io"),
                              ("phone number", "555"))
    assert names == ["<EMAIL_1>", "<EMAIL_2>", "<EMAIL_1>", "<PHONE_NUMBER_1>"]
    assert vault.restore("to <EMAIL_2> and <EMAIL_1>, not <EMAIL_9>") == \
        "to b@x.io and a@x.io, not <EMAIL_9>"


ANSWER = "Mail <EMAIL_1> or <EMAIL_12> about <ORDER_1>; a < b and <b>bold</b>."
RESTORED = "Mail a@x.io or z@x.io about ORD-1; a < b and <b>bold</b>."


@pytest.mark.parametrize("pieces", list(splits(ANSWER)), ids=str)
def test_a_placeholder_split_across_chunks_is_still_restored(pieces):
    vault, _ = vault_with(*[("EMAIL", f"{c}@x.io") for c in "abcdefghijkl"], ("ORDER", "ORD-1"))
    vault._by_placeholder["<EMAIL_12>"] = "z@x.io"
    restorer = StreamRestorer(vault)
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == RESTORED


def test_the_restorer_holds_back_only_what_can_still_be_a_placeholder():
    vault, _ = vault_with(("EMAIL", "a@x.io"))
    restorer = StreamRestorer(vault)
    assert restorer.feed("x <EM") == "x "
    assert restorer.feed("PTY") == "<EMPTY"  # cannot become <EMAIL_1> any more
    assert restorer.feed(" <") == " "
    assert restorer.feed("EMAIL_1> done") == "a@x.io done"
