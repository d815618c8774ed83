"""Sections → chunks: structure first, then a token budget with overlap, never mid-word.

A section (one heading path, or one PDF page) is never mixed with another. Inside it the
paragraphs are packed into chunks of at most `max_tokens`; a paragraph longer than the budget
is split into sentences, and a sentence longer than the budget into runs of words. Each new
chunk of a section starts with the last ~`overlap_tokens` of the previous one, so a fact that
straddles a boundary is whole in at least one chunk. A chunk's text starts with its heading
path, which is what makes "Account > Delete your account" findable from a bare paragraph.

Tokens are estimated as words × 1.3 by default (what all-MiniLM-L6-v2's WordPiece gives on
English prose, within ~10%): exact counting would tokenize every candidate twice for little
gain. An embedder with a `count_tokens(text) -> int` method is used instead when it has one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from keel.grounding.knowledge.base import Chunk, Section

TokenCounter = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORDS_PER_TOKEN = 1 / 1.3


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * 1.3)


@dataclass(frozen=True)
class ChunkSettings:
    max_tokens: int = 256
    overlap_tokens: int = 32

    def key(self) -> str:
        """Part of each document's content hash: new settings re-chunk unchanged files."""
        return f"chunks:{self.max_tokens}:{self.overlap_tokens}"


@dataclass
class _Unit:
    text: str
    glue: str  # what joins it to the unit before: a paragraph break or a space
    tokens: int


def chunk_sections(
    sections: list[Section],
    settings: ChunkSettings = ChunkSettings(),
    count: TokenCounter = estimate_tokens,
) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in sections:
        prefix = f"{section.location}\n\n" if section.location and section.prefix_location else ""
        # The heading path costs tokens too, but never leaves less than half the budget.
        budget = max(settings.max_tokens - count(prefix), settings.max_tokens // 2, 1)
        for body in _pack(_units(section.text, budget, count), budget, settings, count):
            text = prefix + body
            chunks.append(Chunk(text, section.location, len(chunks), count(text)))
    return chunks


def _units(text: str, budget: int, count: TokenCounter) -> list[_Unit]:
    units: list[_Unit] = []
    for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        tokens = count(paragraph)
        if tokens <= budget:
            units.append(_Unit(paragraph, "\n\n", tokens))
            continue
        glue = "\n\n"
        for sentence in _SENTENCE_END.split(paragraph):
            for piece in _fit(sentence, budget, count):
                units.append(_Unit(piece, glue, count(piece)))
                glue = " "
    return units


def _fit(sentence: str, budget: int, count: TokenCounter) -> list[str]:
    """The sentence itself, or runs of whole words within the budget if it is too long."""
    if count(sentence) <= budget:
        return [sentence]
    runs, words = [], []
    for word in sentence.split():
        if words and count(" ".join([*words, word])) > budget:
            runs.append(" ".join(words))
            words = []
        words.append(word)
    if words:
        runs.append(" ".join(words))
    return runs


def _pack(units: list[_Unit], budget: int, settings: ChunkSettings, count: TokenCounter):
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > budget:
            yield _join(current)
            current = _overlap(current, settings.overlap_tokens, budget - unit.tokens, count)
            size = sum(u.tokens for u in current)
        current.append(unit)
        size += unit.tokens
    if current:
        yield _join(current)


def _overlap(previous: list[_Unit], overlap: int, room: int, count: TokenCounter) -> list[_Unit]:
    """The tail of the previous chunk, in whole words, that fits in both the overlap and room."""
    limit = min(overlap, room)
    if limit <= 0:
        return []
    words = _join(previous).split()
    take = max(0, min(len(words), int(limit * _WORDS_PER_TOKEN)))
    while take and count(" ".join(words[-take:])) > limit:
        take -= 1
    if not take:
        return []
    tail = " ".join(words[-take:])
    return [_Unit(tail, "\n\n", count(tail))]


def _join(units: list[_Unit]) -> str:
    text = units[0].text
    for unit in units[1:]:
        text += unit.glue + unit.text
    return text
