"""How found values are masked: redacted as `[LABEL]`, or pseudonymised reversibly.

Pseudonymisation replaces each distinct value by a stable placeholder `<LABEL_n>` before the
model sees it; the `Vault` (one per request, never stored) remembers which value each
placeholder stands for, so the answer the user receives gets the originals back. The same value
gets the same placeholder in every message of the request, so the model can still tell that two
mentions are the same person, card or address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keel.guardrails.base import Match

_LABEL_CHARS = re.compile(r"[^A-Z0-9]+")
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")


def clean_label(label: str) -> str:
    """A label as it appears in a mask: upper case letters, digits and underscores."""
    return _LABEL_CHARS.sub("_", label.upper()).strip("_") or "REDACTED"


class Vault:
    """The placeholders of one request, both ways."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._by_placeholder)

    def placeholder(self, label: str, value: str) -> str:
        label = clean_label(label)
        key = (label, value)
        found = self._by_value.get(key)
        if found is None:
            self._counts[label] = n = self._counts.get(label, 0) + 1
            found = f"<{label}_{n}>"
            self._by_value[key] = found
            self._by_placeholder[found] = value
        return found

    @property
    def placeholders(self) -> list[str]:
        return list(self._by_placeholder)

    def restore(self, text: str) -> str:
        """`text` with every placeholder of this request replaced by its original value (an
        unknown `<FOO_1>`, one the model made up, stays as it is)."""
        if not self._by_placeholder or "<" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    def could_grow_into_placeholder(self, tail: str) -> bool:
        """Whether `tail` (text from a `<` to the end of what has arrived) may be the start of a
        placeholder of this request, so a stream must wait for more before restoring it."""
        return any(p.startswith(tail) for p in self._by_placeholder)


@dataclass(frozen=True, slots=True)
class Tagged:
    """A match and what to do with it: "redact" or "pseudonymize"."""

    match: Match
    action: str


def mask(text: str, found: list[Tagged], vault: Vault | None) -> str:
    """`text` with each match masked. Overlapping matches (two guards finding the same card)
    are masked once: the one that starts first wins, the longer one on a tie."""
    if not found:
        return text
    out, pos = [], 0
    for tagged in sorted(found, key=lambda t: (t.match.start, -t.match.end)):
        m = tagged.match
        if m.start < pos or m.end <= m.start:
            continue
        out.append(text[pos:m.start])
        out.append(mask_one(text[m.start:m.end], m.label, tagged.action, vault))
        pos = m.end
    out.append(text[pos:])
    return "".join(out)


def mask_one(value: str, label: str, action: str, vault: Vault | None) -> str:
    if action == "pseudonymize" and vault is not None:
        return vault.placeholder(label, value)
    return f"[{clean_label(label)}]"
