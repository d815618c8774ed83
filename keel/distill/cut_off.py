"""Answers that `max_tokens` cut off, in a training set: keep them, drop them, or trim them.

A model learns when to stop from the end of each target. An answer the teacher was cut off in
(`finish_reason: "length"`) ends mid-sentence with no end of turn after its last word, so a
student taught on it learns to run on until its own limit: longer answers, slower requests,
and a sentence broken off at the end. `drop` (the default) leaves such answers out; `trim`
keeps the answer up to its last complete sentence (an answer with none, or one cut off inside
a tool call, is dropped); `keep` takes them as they are.

    reason = finish_reason(response)            # "stop", "length", … or None when unknown
    answer = apply_cut_off(answer, reason, "trim")   # the answer to learn, or None to drop it
    meta = cut_off_meta(reason, "trim")              # {"cut_off": "trim"} when it was cut off
"""

from __future__ import annotations

import re
from typing import Any

from keel.errors import InvalidRequest
from keel.messages import finish_reasons

CUT_OFF_MODES = ("drop", "trim", "keep")
DEFAULT_CUT_OFF = "drop"

# A sentence ends at . ! or ? (closing quotes, brackets or ** may follow) before a space or the
# end of the text.
_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")
# ...but not the "4." that starts a list item (on its own line or after a sentence): the answer
# was cut off right after it.
_LIST_NUMBER = re.compile(r"(?:^|\n|[.!?:] )[ \t]*\d+$")


def finish_reason(response: Any) -> str | None:
    """Why the recorded answer ended: a chat.completion's first choice, or a stream's summary."""
    return next(iter(finish_reasons(response)), None)


def trim_to_sentence(text: str) -> str | None:
    """`text` up to the end of its last complete sentence, or None when it has none."""
    for end in reversed(list(_SENTENCE_END.finditer(text))):
        if _LIST_NUMBER.search(text, 0, end.start()):
            continue
        if end.end() == len(text) and text[end.start() - 1:end.start()].isdigit():
            continue  # "TLS 1." where the cut fell: it may have gone on "2"
        return text[:end.end()].rstrip()
    return None


def apply_cut_off(answer: dict, reason: str | None, mode: str) -> dict | None:
    """The assistant message to learn from an answer that ended for `reason`, under `mode`."""
    if reason != "length" or mode == "keep":
        return answer
    if mode == "drop" or answer.get("tool_calls"):
        return None
    content = answer.get("content")
    trimmed = trim_to_sentence(content) if isinstance(content, str) else None
    return {**answer, "content": trimmed} if trimmed else None


def check_cut_off(mode: str) -> None:
    if mode not in CUT_OFF_MODES:
        raise InvalidRequest(f"cut_off: expected one of {', '.join(CUT_OFF_MODES)}, got "
                             f"{mode!r}", param="cut_off")


def cut_off_meta(reason: str | None, mode: str) -> dict:
    """The example's metadata: `cut_off: <mode>` on a target `max_tokens` cut off (trimmed or
    kept), so it can be told apart in the set, and ranked below a complete one."""
    return {"cut_off": mode} if reason == "length" else {}
