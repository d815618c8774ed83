"""Builders for OpenAI-shaped `chat.completion` and `chat.completion.chunk` dicts.

What they build validates against the official OpenAI schema (`CreateChatCompletionResponse`,
`CreateChatCompletionStreamResponse`): the fields strict clients require are always present
(`message.refusal`, `choices[].logprobs`, `finish_reason`, `object`, `created`).

Every provider builds its answers here (the local engine through `local/response.py`), and
every layer that sums token counts over several calls uses `add_usage`.

`normalize_completion` and `normalize_chunk` fill those same fields into an upstream's answer in
place. Many OpenAI-compatible servers (vLLM, Ollama, llama.cpp) leave some out; they run on the
hot path, so they only touch what is missing and never copy.
"""

from __future__ import annotations

import os
import time

COMPLETION = "chat.completion"
CHUNK = "chat.completion.chunk"


def new_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def add_usage(total: dict, more: dict | None) -> dict:
    """Add `more`'s token counts into `total` in place (a round of a multi-call request)."""
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if more and isinstance(more.get(key), int):
            total[key] = total.get(key, 0) + more[key]
    return total


def message(content: str | None, tool_calls: list[dict] | None = None) -> dict:
    msg = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(
    model: str,
    content: str | None,
    *,
    tool_calls: list[dict] | None = None,
    finish_reason: str = "stop",
    usage: dict | None = None,
    system_fingerprint: str | None = None,
    n: int = 1,
    id: str | None = None,
    created: int | None = None,
) -> dict:
    """A `chat.completion` with `n` identical choices."""
    choices = [
        {
            "index": i,
            "message": message(content, tool_calls),
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        for i in range(n)
    ]
    out = {
        "id": id or new_id(),
        "object": COMPLETION,
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if system_fingerprint:
        out["system_fingerprint"] = system_fingerprint
    if usage is not None:
        out["usage"] = usage
    return out


def chunk(
    id: str,
    created: int,
    model: str,
    delta: dict,
    *,
    finish_reason: str | None = None,
    index: int = 0,
    system_fingerprint: str | None = None,
) -> dict:
    """One streamed `chat.completion.chunk` carrying `delta` for choice `index`."""
    out = {
        "id": id,
        "object": CHUNK,
        "created": created,
        "model": model,
        "choices": [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if system_fingerprint:
        out["system_fingerprint"] = system_fingerprint
    return out


def usage_chunk(
    id: str, created: int, model: str, usage: dict, *, system_fingerprint: str | None = None
) -> dict:
    """The last chunk of a stream when usage is asked for: no choices, only `usage`."""
    out = {"id": id, "object": CHUNK, "created": created, "model": model, "choices": []}
    if system_fingerprint:
        out["system_fingerprint"] = system_fingerprint
    out["usage"] = usage
    return out


def normalize_completion(d: dict) -> dict:
    """Fill the fields strict clients require into an upstream's `chat.completion`, in place."""
    if "object" not in d:
        d["object"] = COMPLETION
    if "created" not in d:
        d["created"] = int(time.time())
    if not d.get("id"):
        d["id"] = new_id()
    # Some servers send explicit nulls where the schema allows only absence.
    if "system_fingerprint" in d and d["system_fingerprint"] is None:
        del d["system_fingerprint"]
    if "usage" in d and d["usage"] is None:
        del d["usage"]
    for i, choice in enumerate(d.get("choices") or ()):
        if "index" not in choice:
            choice["index"] = i
        if "logprobs" not in choice:
            choice["logprobs"] = None
        if choice.get("finish_reason") is None:
            choice["finish_reason"] = "stop"
        msg = choice.get("message")
        if msg is None:
            choice["message"] = message(None)
            continue
        if "role" not in msg:
            msg["role"] = "assistant"
        if "content" not in msg:
            msg["content"] = None
        if "refusal" not in msg:
            msg["refusal"] = None
    return d


def normalize_chunk(d: dict) -> dict:
    """Fill the fields strict clients require into an upstream's chunk, in place."""
    if "object" not in d:
        d["object"] = CHUNK
    if "created" not in d:
        d["created"] = int(time.time())
    if "system_fingerprint" in d and d["system_fingerprint"] is None:
        del d["system_fingerprint"]
    choices = d.get("choices")
    if choices is None:
        d["choices"] = []
        return d
    for i, choice in enumerate(choices):
        if "index" not in choice:
            choice["index"] = i
        if "finish_reason" not in choice:
            choice["finish_reason"] = None
        if "delta" not in choice:
            choice["delta"] = {}
    return d
