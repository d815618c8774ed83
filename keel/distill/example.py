"""One training example: the conversation up to an answer, and the assistant message to learn.

An `Example` travels as an eval `Sample` (`to_sample` / `from_sample`): `input` the prompt,
`ideal` the answer's text, `metadata.answer` the whole assistant message and `metadata.tools`
the request's tools, so `keel eval` runs on a split unchanged and `keel.distill.export`
rebuilds the fine-tuning line from it. `assistant_message` reads the answer out of a recorded
response; `clean_message` keeps the keys a training line may carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from keel.errors import InvalidRequest
from keel.evals.base import Sample
from keel.messages import content_text

# The keys a chat message may carry into a training line; the rest (refusal: null,
# annotations, audio…) is response decoration that fine-tuning APIs refuse.
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "weight")


@dataclass
class Example:
    prompt: list[dict]  # the messages up to the answer
    answer: dict  # the assistant message to learn: content and/or tool_calls
    tools: list[dict] | None = None
    origin: str = ""  # the trace id, or the prompt sample's id
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> list[dict]:
        return [*self.prompt, self.answer]

    def key(self) -> str:
        """The canonical JSON of what is learnt (messages and tools): exact-duplicate key."""
        return canonical({"messages": self.messages, "tools": self.tools}).decode()

    def to_sample(self) -> Sample:
        metadata = {"answer": self.answer, **self.meta}
        if self.tools:
            metadata["tools"] = self.tools
        if self.origin:
            metadata["origin"] = self.origin
        text = self.answer.get("content")
        return Sample(id="", input=self.prompt, ideal=content_text(text) if text else None,
                      metadata=metadata)

    @classmethod
    def from_sample(cls, sample: Sample) -> Example:
        meta = dict(sample.metadata or {})
        answer = meta.pop("answer", None)
        if answer is None:  # a plain eval dataset: its ideal is the answer
            if not sample.ideals():
                raise InvalidRequest(f"sample {sample.id!r} has no answer (metadata.answer or "
                                     "ideal) to train on")
            answer = {"role": "assistant", "content": sample.ideals()[0]}
        return cls(prompt=list(sample.input), answer=answer, tools=meta.pop("tools", None),
                   origin=meta.pop("origin", sample.id), meta=meta)


def assistant_message(response: Any) -> dict | None:
    """The answer of a chat.completion (or of a streamed trace's assembled `content`)."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return None
        message = clean_message({**message, "role": "assistant"})
    elif isinstance(response.get("content"), str):
        message = {"role": "assistant", "content": response["content"]}
    else:
        return None
    if not message.get("content") and not message.get("tool_calls"):
        return None
    return message


def clean_message(message: dict) -> dict:
    """A message as a training line holds it: the chat keys only, no nulls, tool calls as
    {id, type, function: {name, arguments}}."""
    out = {k: message[k] for k in MESSAGE_KEYS if message.get(k) is not None}
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c.get("id"), "type": c.get("type", "function"),
             "function": {"name": (c.get("function") or {}).get("name"),
                          "arguments": (c.get("function") or {}).get("arguments", "{}")}}
            for c in out["tool_calls"] if isinstance(c, dict)]
    elif "tool_calls" in out:
        del out["tool_calls"]
    return out



def canonical(value) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
