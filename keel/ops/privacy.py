"""What of a trace may be stored when `tracing.record_bodies` is false: no user or model text.

The guarantee is made here, where a trace becomes a row, not by each layer remembering what it
must not put on a span: layers record whatever helps debugging (the knowledge query, a tool's
arguments, the JSON problem that quotes the model's answer), and with bodies off this module
keeps only what cannot carry text — numbers, booleans, None — and strings under keys known to
hold identifiers or names chosen by the operator or by Keel itself (`SAFE_KEYS`). Every other
string becomes `REDACTED`, so the trace still shows that a value was there. An error keeps its
`type`, `code` and `param`; its message, which may quote the request, is replaced. A model name
is kept only when it named a configured route (the trace has a provider).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

# Strings under these keys are identifiers, names from keel.yaml, or values Keel itself sets —
# never text a user or a model wrote. Add a key here only if that holds for every layer.
SAFE_KEYS = frozenset({
    "attempt", "chunk_id", "code", "collection", "document_id", "endpoint", "finish_reason",
    "fusion", "id", "index", "kind", "method", "mode", "model", "ok", "provider",
    "source", "status", "tool", "type", "upstream_model", "used", "version",
})

# A span's name is set by code ("knowledge.retrieve", "tool:get_rates"); the tool part comes
# from the model's call, so anything that does not look like an identifier is redacted too.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_SAFE_PARAM = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,128}$")


def redact_attrs(value: Any, safe: bool = False) -> Any:
    """`value` with every string that is not under a `SAFE_KEYS` key replaced by REDACTED."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if safe and len(value) <= 200 else REDACTED
    if isinstance(value, dict):
        return {
            str(key): redact_attrs(item, safe=str(key) in SAFE_KEYS)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_attrs(item, safe) for item in value]
    return REDACTED  # anything else would be serialised as text (repr, model_dump, bytes)


def redact_span(span: dict) -> dict:
    name = span.get("name")
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        span["name"] = REDACTED
    span["attrs"] = redact_attrs(span.get("attrs") or {})
    return span


def redact_model(model: str | None) -> str | None:
    """A model name no route answered to (a 404) is whatever the client typed."""
    return None if model is None else REDACTED


def redact_error(error: Any) -> dict | None:
    """An OpenAI error body reduced to what names the error, not what the request said."""
    if not isinstance(error, dict):
        return None if error is None else {"message": REDACTED}
    out: dict[str, Any] = {"message": REDACTED}
    for key in ("type", "code"):
        if isinstance(error.get(key), str):
            out[key] = error[key][:100]
        elif error.get(key) is not None and isinstance(error.get(key), (int, bool)):
            out[key] = error[key]
    param = error.get("param")
    if isinstance(param, str) and _SAFE_PARAM.match(param):
        out["param"] = param
    elif param is not None:
        out["param"] = REDACTED
    if isinstance(error.get("status"), int):
        out["status"] = error["status"]
    return out
