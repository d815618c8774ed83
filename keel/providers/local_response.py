"""OpenAI-shaped `chat.completion` and `chat.completion.chunk` dicts for the local engine."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from keel.providers.local_json import compact_dumps


@dataclass
class Envelope:
    """What every response and chunk of one request shares."""

    model: str
    fingerprint: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, obj: str) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_call(text: str, known: tuple[str, ...]) -> dict | None:
    """The tool call the grammar made the model write, or None if `text` is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in known:
        return None
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": value["name"], "arguments": compact_dumps(value.get("arguments", {}))},
    }


def completion(env: Envelope, text: str, finish: str, call: dict | None, use: dict) -> dict:
    message = {"role": "assistant", "content": None if call else text, "refusal": None}
    if call:
        message["tool_calls"] = [call]
    return {
        **env.head("chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if call else finish,
            }
        ],
        "usage": use,
    }


def chunk(env: Envelope, delta: dict, finish: str | None = None) -> dict:
    return {
        **env.head("chat.completion.chunk"),
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def tool_call_delta(call: dict) -> dict:
    return {"tool_calls": [{"index": 0, **call}]}


def usage_chunk(env: Envelope, use: dict) -> dict:
    return {**env.head("chat.completion.chunk"), "choices": [], "usage": use}
