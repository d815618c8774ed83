"""Canonical cache keys: what must match for a cached answer to be reused.

Two hashes are derived from one request (sha256 over orjson with sorted keys, so the order of
fields in the client's JSON never matters):

- the **exact key**: route, upstream model, every message, every parameter that can change the
  answer (tools, response_format, seed, temperature, max_tokens, ...) and, on grounded routes,
  the knowledge collection's version;
- the **namespace**: the same, except the content of the last user message. Semantic lookups
  compare the embedding of that last message only with entries of the same namespace, so a
  paraphrase may hit but a different system prompt, earlier turn or tool list never does.

Parameters are dropped by a deny list, not picked by an allow list: a field Keel does not know
(a provider extension) then changes the key, which costs a hit at worst, never a wrong answer.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from keel.messages import content_text

# Fields that never change the answer: how it is delivered, who asked, what to store.
IGNORED = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata", "store",
                     "service_tier"})
VERSION = 1  # bump when what goes into a key changes: old entries then simply stop matching


def parameters(body: dict) -> dict[str, Any]:
    """The request fields that can change the answer (everything but IGNORED)."""
    return {k: v for k, v in body.items() if k not in IGNORED and v is not None}


def last_user_index(messages: list) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, dict) and message.get("role") == "user":
            return i
    return None


def query_text(body: dict) -> str | None:
    """The last user message as text, for the semantic key; None when it has none, or has parts
    that are not text (an image question must match exactly)."""
    messages = body.get("messages") or []
    i = last_user_index(messages)
    if i is None:
        return None
    content = messages[i].get("content")
    if isinstance(content, list) and any(
            not isinstance(p, dict) or p.get("type") != "text" for p in content):
        return None
    text = content_text(content)
    return text if text.strip() else None


def exact_key(route: str, upstream_model: str, body: dict, knowledge_version: str | None) -> str:
    return _hash(_material(route, upstream_model, body, knowledge_version,
                           list(body.get("messages") or [])))


def namespace(route: str, upstream_model: str, body: dict, knowledge_version: str | None) -> str:
    messages = list(body.get("messages") or [])
    i = last_user_index(messages)
    if i is not None:
        # The question itself is what the embedding compares; everything around it must match.
        messages[i] = {**messages[i], "content": "\x00question\x00"}
    return _hash(_material(route, upstream_model, body, knowledge_version, messages))


def _material(route, upstream_model, body, knowledge_version, messages) -> dict:
    return {
        "v": VERSION,
        "route": route,
        "upstream": upstream_model,
        "messages": messages,
        "params": parameters(body),
        "knowledge": knowledge_version,
    }


def _hash(material: dict) -> str:
    data = orjson.dumps(material, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                        default=str)
    return hashlib.sha256(data).hexdigest()
