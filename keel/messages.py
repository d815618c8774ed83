"""The text of chat messages, one way for the whole of Keel.

A message's `content` is a string, a list of content parts (`{"type": "text", "text": …}`,
images, audio, refusals) or null. Where Keel needs it as text — a search query, a judge's
prompt, a table in the CLI, a fake model's echo — the text parts are joined and the rest left
out; the local engine, which must refuse images rather than drop them, checks parts itself.
`finish_reasons` reads how a recorded response ended (tracing, training sets).
"""

from __future__ import annotations

from typing import Any


def content_text(content: Any, sep: str = " ") -> str:
    """A message's content as text: a string as it is, the text parts of a list joined by `sep`
    (refusal parts too), nothing for null; anything else as `str()`."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(_part_text(p) for p in content if isinstance(p, dict) and _part_text(p))
    return str(content)


def last_user_text(messages: list[dict] | None, sep: str = " ") -> str:
    """The text of the latest user message, or "" when there is none."""
    for message in reversed(messages or ()):
        if message.get("role") == "user":
            return content_text(message.get("content"), sep)
    return ""


def finish_reasons(response: Any) -> list[str]:
    """Why a recorded response ended: each choice's `finish_reason` of a chat.completion, or a
    stream's summary (keel.api.sse) one; [] when it does not say."""
    if not isinstance(response, dict):
        return []
    choices = response.get("choices")
    if isinstance(choices, list):
        return [c["finish_reason"] for c in choices
                if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)]
    reason = response.get("finish_reason")
    return [reason] if isinstance(reason, str) else []


def _part_text(part: dict) -> str:
    if part.get("type") == "refusal":
        return part.get("refusal") or ""
    return part.get("text") or ""
