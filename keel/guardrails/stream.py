"""Guards on a stream as it passes: masking what detectors find, and restoring placeholders.

Tokens arrive in pieces, and what a detector looks for may be split across them ("4111 1111"
then " 1111 1111"). `StreamMasker` keeps back only the last `holdback` characters — the longest
match that may still be growing — and emits the rest masked; a match that reaches into the kept
part is kept back whole until it is complete. `StreamRestorer` does the reverse for
pseudonymisation: it holds back a trailing `<...` only while it can still become one of the
request's placeholders.
"""

from __future__ import annotations

from collections.abc import Callable

from keel.guardrails.base import Match
from keel.guardrails.vault import Tagged, Vault, mask

# Already-emitted text kept as look-behind, so a pattern anchored on a word boundary does not
# match the middle of a word that was cut in two.
CONTEXT = 32

Finder = Callable[[str], list[Match]]


class StreamMasker:
    def __init__(self, detectors: list[tuple[Finder, str, int]], vault: Vault | None = None,
                 on_block: Callable[[int, list[Match]], None] | None = None) -> None:
        """`detectors`: (find, action, holdback) for each detector, in the configured order;
        `on_block(i, matches)` is called (and may raise) when detector `i`, whose action is
        block, finds something."""
        self.detectors = detectors
        self.vault = vault
        self.on_block = on_block
        self.holdback = max((h for _, _, h in detectors), default=0)
        self._pending = ""
        self._context = ""
        self.found: list[list[Match]] = [[] for _ in detectors]  # what each one masked

    def feed(self, text: str) -> str:
        """Take `text`; return what can be sent now, masked."""
        self._pending += text
        return self._emit(final=False)

    def flush(self) -> str:
        """The stream ended: everything left, masked."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        pending = self._pending
        if not pending:
            return ""
        window = self._context + pending
        offset = len(self._context)
        tagged: list[tuple[int, Tagged]] = []
        for i, (find, action, _) in enumerate(self.detectors):
            matches = [Match(m.start - offset, m.end - offset, m.label, m.score)
                       for m in find(window) if m.start >= offset]
            if not matches:
                continue
            if action == "block":
                if self.on_block is not None:
                    self.on_block(i, matches)
                continue
            if action in ("redact", "pseudonymize"):
                tagged.extend((i, Tagged(m, action)) for m in matches)
        cut = len(pending) if final else len(pending) - self.holdback
        # A match reaching past the cut waits whole (and so may one overlapping it).
        for _, t in sorted(tagged, key=lambda it: -it[1].match.start):
            if t.match.start < cut < t.match.end:
                cut = t.match.start
        if cut <= 0:
            return ""
        ready = [(i, t) for i, t in tagged if t.match.end <= cut]
        for i, t in ready:
            self.found[i].append(t.match)
        out = mask(pending[:cut], [t for _, t in ready], self.vault)
        self._context = (self._context + pending[:cut])[-CONTEXT:]
        self._pending = pending[cut:]
        return out


class StreamRestorer:
    """Puts the originals back in place of a request's placeholders, across chunk boundaries."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self._pending = ""

    def feed(self, text: str) -> str:
        pending = self._pending + text
        start = pending.rfind("<")
        if start >= 0 and ">" not in pending[start:] and \
                self.vault.could_grow_into_placeholder(pending[start:]):
            self._pending = pending[start:]
            return self.vault.restore(pending[:start])
        self._pending = ""
        return self.vault.restore(pending)

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return self.vault.restore(pending)
