"""The local engine's output in OpenAI shapes, built with `keel.providers.shapes`.

`Envelope` holds what every response and chunk of one request shares (id, created, model,
fingerprint); the dicts themselves come from the shared builders, so the local engine and the
other providers cannot drift apart.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from keel.providers import shapes
from keel.providers.local.json_mode import compact_dumps


@dataclass
class Envelope:
    model: str
    fingerprint: str | None
    id: str = field(default_factory=shapes.new_id)
    created: int = field(default_factory=lambda: int(time.time()))

    def completion(self, text: str, finish: str, call: dict | None, usage: dict) -> dict:
        # A complete call answers "tool_calls"; one that closing mode cut short keeps "length".
        return shapes.completion(
            self.model,
            None if call else text,
            tool_calls=[call] if call else None,
            finish_reason="tool_calls" if call and finish == "stop" else finish,
            usage=usage,
            system_fingerprint=self.fingerprint,
            id=self.id,
            created=self.created,
        )

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        return shapes.chunk(
            self.id, self.created, self.model, delta,
            finish_reason=finish, system_fingerprint=self.fingerprint,
        )

    def usage_chunk(self, usage: dict) -> dict:
        return shapes.usage_chunk(
            self.id, self.created, self.model, usage, system_fingerprint=self.fingerprint
        )


def tool_call(text: str, known: tuple[str, ...]) -> dict | None:
    """The tool call the grammar made the model write, or None if `text` is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in known:
        return None
    arguments = compact_dumps(value.get("arguments", {}))
    return shapes.tool_call("call_" + secrets.token_hex(12), value["name"], arguments)


def tool_call_delta(call: dict) -> dict:
    return {"tool_calls": [{"index": 0, **call}]}
