"""Chunking: sections stay apart, the token budget holds, overlap is whole words."""

from __future__ import annotations

from keel.grounding.knowledge.base import Section
from keel.grounding.knowledge.chunking import (
    ChunkSettings,
    chunk_sections,
    estimate_tokens,
)


def words(n: int, stem: str = "word") -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


def test_each_heading_section_is_its_own_chunk_prefixed_with_its_path():
    chunks = chunk_sections([
        Section("Account > Delete your account", "Open Settings and choose Delete."),
        Section("Account > Password", "Pick a new password."),
    ])
    assert [c.location for c in chunks] == ["Account > Delete your account", "Account > Password"]
    assert chunks[0].text == "Account > Delete your account\n\nOpen Settings and choose Delete."
    assert [c.ordinal for c in chunks] == [0, 1]


def test_pages_are_not_prefixed():
    (chunk,) = chunk_sections([Section("page 3", "Rates rose.", prefix_location=False)])
    assert chunk.text == "Rates rose." and chunk.location == "page 3"


def test_small_paragraphs_pack_into_one_chunk():
    chunks = chunk_sections([Section("", "First para.\n\nSecond para.\n\nThird para.")])
    assert len(chunks) == 1
    assert chunks[0].text == "First para.\n\nSecond para.\n\nThird para."


def test_budget_is_respected_and_nothing_is_lost():
    paragraphs = [words(40, f"p{i}w") for i in range(10)]  # 52 estimated tokens each
    settings = ChunkSettings(max_tokens=120, overlap_tokens=0)
    chunks = chunk_sections([Section("", "\n\n".join(paragraphs))], settings)
    assert len(chunks) == 5
    assert all(c.tokens <= 120 for c in chunks)
    joined = " ".join(c.text for c in chunks).split()
    assert joined == " ".join(paragraphs).split()  # every word once, in order, no overlap


def test_overlap_repeats_the_tail_of_the_previous_chunk_in_whole_words():
    paragraphs = [words(40, f"p{i}w") for i in range(4)]
    settings = ChunkSettings(max_tokens=120, overlap_tokens=13)  # 13 tokens = 10 words
    chunks = chunk_sections([Section("", "\n\n".join(paragraphs))], settings)
    assert len(chunks) >= 2
    for before, after in zip(chunks, chunks[1:]):
        tail = before.text.split()[-10:]
        assert after.text.split()[:10] == tail
        assert after.tokens <= 120


def test_a_paragraph_longer_than_the_budget_is_split_by_sentences():
    sentences = [f"Sentence {i} says {words(12, f's{i}w')}." for i in range(12)]
    paragraph = " ".join(sentences)
    chunks = chunk_sections([Section("", paragraph)], ChunkSettings(64, 0))
    assert len(chunks) > 1
    assert all(c.tokens <= 64 for c in chunks)
    for chunk in chunks:  # every chunk starts at a sentence and ends at one
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith(".")


def test_a_sentence_longer_than_the_budget_is_split_between_words():
    text = words(300)
    chunks = chunk_sections([Section("", text)], ChunkSettings(50, 0))
    assert all(c.tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()  # no word cut in two


def test_the_heading_prefix_counts_against_the_budget():
    heading = "A long heading path > with several levels > of nesting here"
    chunks = chunk_sections([Section(heading, words(200))], ChunkSettings(100, 0))
    assert all(c.tokens <= 100 for c in chunks)
    assert all(c.text.startswith(heading + "\n\n") for c in chunks)


def test_a_custom_token_counter_is_used():
    chunks = chunk_sections([Section("", "a b c d e f")], ChunkSettings(3, 0),
                            count=lambda t: len(t.split()))
    assert [c.text for c in chunks] == ["a b c", "d e f"]


def test_estimate_is_words_times_1_3_rounded_up():
    assert estimate_tokens("one two three") == 4
    assert estimate_tokens("") == 0
