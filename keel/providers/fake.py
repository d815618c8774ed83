"""The `fake` provider: scripted, deterministic answers with no network, for tests and benchmarks.

The model name chooses the behaviour (a `fake/` prefix is accepted and ignored):

    echo            the last user message's text (also any unknown name)
    fixed:<text>    always <text>
    json            a JSON object; with a `json_schema` response_format, a small valid instance
    bad-json        invalid JSON text, whatever was asked (to exercise repair)
    bad-json-once   invalid JSON on odd calls, valid on even ones (repair that succeeds)
    tool-call       calls the first tool in `tools` with arguments built from its schema
    slow, slow-<ms> waits (`slow_ms`, or <ms>) then echoes; streams wait that long per word
    flaky           fails with a 502 on odd calls (1st, 3rd, ...), echoes on even ones
    flaky-<n>       fails with a 502 on its first <n> calls (per provider, per name), then echoes
    error-429       rate limited, with `Retry-After: 7`
    error-<status>  fails as an upstream answering <status> would (500, 503, 400, 401, ...)
    context-<n>     echoes, with a context of <n> tokens: a longer prompt (or prompt +
                    max_tokens) is a 400 `context_length_exceeded`, as on the local engine

Tokens are whitespace-separated words, so usage is predictable. `max_tokens` (or
`max_completion_tokens`) truncates the answer to that many words with finish_reason `length`.
The same fake served over HTTP is `keel.providers.fake_server` (`keel fake-upstream`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import AsyncIterator, ClassVar

import orjson

from keel.errors import InvalidRequest, KeelError, UpstreamError, UpstreamRateLimited
from keel.messages import content_text, last_user_text
from keel.providers import shapes
from keel.providers.base import ProviderOptions

MODELS = (
    "echo",
    "json",
    "bad-json",
    "bad-json-once",
    "tool-call",
    "slow",
    "flaky",
    "error-429",
    "error-500",
)

_WORDS = re.compile(r"\S+\s*|\s+")
_BAD_JSON = '{"answer": "this is not valid JSON'


class FakeOptions(ProviderOptions):
    slow_ms: float = 200.0
    retry_after: str = "7"
    system_fingerprint: str = "fp_fake_v1"


class FakeProvider:
    kind: ClassVar[str] = "fake"
    Options: ClassVar[type[ProviderOptions]] = FakeOptions

    def __init__(self, name: str = "fake", options: FakeOptions | None = None) -> None:
        self.name = name
        self.options = options or FakeOptions()
        # Per-behaviour call counts make `flaky` and `bad-json-once` deterministic.
        self._calls: Counter[str] = Counter()

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def check(self, body: dict, model: str) -> None:
        pass

    async def chat(self, body: dict, model: str) -> dict:
        behaviour = _behaviour(model)
        answer = self._answer(behaviour, body)
        n = body.get("n") or 1
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return shapes.completion(
            model,
            answer.content,
            tool_calls=answer.tool_calls,
            finish_reason=answer.finish_reason,
            usage=shapes.usage(_prompt_tokens(body), answer.completion_tokens * n),
            system_fingerprint=self.options.system_fingerprint,
            n=n,
        )

    async def stream(self, body: dict, model: str) -> AsyncIterator[dict]:
        behaviour = _behaviour(model)
        answer = self._answer(behaviour, body)
        cid, created, fp = shapes.new_id(), int(time.time()), self.options.system_fingerprint
        n = body.get("n") or 1

        def chunks(delta: dict, finish_reason: str | None = None):
            for i in range(n):
                yield shapes.chunk(
                    cid, created, model, delta,
                    finish_reason=finish_reason, index=i, system_fingerprint=fp,
                )

        for c in chunks({"role": "assistant", "content": ""}):
            yield c
        if answer.tool_calls:
            deltas = [{"tool_calls": [{"index": 0, **answer.tool_calls[0]}]}]
        else:
            deltas = [{"content": word} for word in _WORDS.findall(answer.content or "")]
        for delta in deltas:
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            for c in chunks(delta):
                yield c
        for c in chunks({}, answer.finish_reason):
            yield c
        usage = shapes.usage(_prompt_tokens(body), answer.completion_tokens * n)
        yield shapes.usage_chunk(cid, created, model, usage, system_fingerprint=fp)

    def _answer(self, behaviour: str, body: dict) -> _Answer:
        """Decide the whole answer up front, so chat and stream agree and errors come first."""
        if behaviour.startswith("error-"):
            raise fake_error(behaviour[6:], self.options.retry_after)
        if behaviour.startswith("fixed:"):
            return _text_answer(behaviour[6:], body)
        if behaviour.startswith("context-"):
            _fit_context(body, int(_number(behaviour[8:], 4096)))
            return _text_answer(_last_user_text(body), body)
        if behaviour == "flaky":
            self._calls[behaviour] += 1
            if self._calls[behaviour] % 2:
                raise fake_error("500", self.options.retry_after, "fake: flaky failure")
            return _text_answer(_last_user_text(body), body)
        if behaviour.startswith("flaky-"):
            self._calls[behaviour] += 1
            if self._calls[behaviour] <= _number(behaviour[6:], 1):
                raise fake_error("500", self.options.retry_after, "fake: flaky failure")
            return _text_answer(_last_user_text(body), body)
        if behaviour == "slow" or behaviour.startswith("slow-"):
            ms = _number(behaviour[5:], self.options.slow_ms)
            return _text_answer(_last_user_text(body), body, delay_s=ms / 1000.0)
        if behaviour == "json":
            return _Answer(_json_text(body))
        if behaviour == "bad-json":
            return _Answer(_BAD_JSON)
        if behaviour == "bad-json-once":
            self._calls[behaviour] += 1
            return _Answer(_BAD_JSON if self._calls[behaviour] % 2 else _json_text(body))
        if behaviour == "tool-call":
            return _tool_call_answer(body)
        return _text_answer(_last_user_text(body), body)


class _Answer:
    __slots__ = ("content", "tool_calls", "finish_reason", "completion_tokens", "delay_s")

    def __init__(
        self,
        content: str | None,
        *,
        tool_calls: list[dict] | None = None,
        finish_reason: str = "stop",
        delay_s: float = 0.0,
    ) -> None:
        self.content = content
        self.tool_calls = tool_calls
        self.finish_reason = finish_reason
        self.delay_s = delay_s
        text = content if content is not None else tool_calls[0]["function"]["arguments"]
        self.completion_tokens = len(text.split())


def fake_error(status: str, retry_after: str = "7", message: str | None = None) -> KeelError:
    """The error an upstream answering `status` would cause; `upstream_status` keeps the status
    so the fake HTTP server can answer with it."""
    try:
        code = int(status)
    except ValueError:
        code = 500
    message = message or f"fake: scripted error {code}"
    if code == 429:
        err: KeelError = UpstreamRateLimited(message, headers={"Retry-After": retry_after})
    elif code in (401, 403):
        err = UpstreamError(f"{message}: invalid API key")
    elif 400 <= code < 500:
        err = InvalidRequest(message, param="messages", code="fake_error")
        err.status = code
    else:
        err = UpstreamError(message)
    err.upstream_status = code  # type: ignore[attr-defined]
    return err


def _fit_context(body: dict, n_ctx: int) -> None:
    # The local engine's checks and wording (keel.providers.local), on whitespace tokens.
    prompt = _prompt_tokens(body)
    if prompt >= n_ctx:
        raise InvalidRequest(
            f"the messages take {prompt} tokens, more than the model's context of {n_ctx} "
            "tokens leaves room for; shorten them",
            param="messages", code="context_length_exceeded")
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    if requested is not None and prompt + requested > n_ctx:
        raise InvalidRequest(
            f"the messages take {prompt} tokens and max_tokens asks for {requested} more, "
            f"beyond the model's context of {n_ctx} tokens; at most {n_ctx - prompt} fit",
            param="max_tokens", code="context_length_exceeded")


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def _behaviour(model: str) -> str:
    return model[5:] if model.startswith("fake/") else model


def _text_answer(text: str, body: dict, delay_s: float = 0.0) -> _Answer:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        words = text.split()
        if len(words) > limit:
            return _Answer(" ".join(words[:limit]), finish_reason="length", delay_s=delay_s)
    return _Answer(text, delay_s=delay_s)


def _last_user_text(body: dict) -> str:
    return last_user_text(body.get("messages"))


def _prompt_tokens(body: dict) -> int:
    return sum(len(content_text(m.get("content")).split()) for m in body.get("messages") or ())


def _json_text(body: dict) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        return orjson.dumps(example_instance(schema)).decode()
    return orjson.dumps({"echo": _last_user_text(body)}).decode()


def _tool_call_answer(body: dict) -> _Answer:
    tools = body.get("tools") or ()
    if not tools:
        raise InvalidRequest("fake/tool-call needs at least one tool in `tools`", param="tools")
    function = tools[0].get("function") or {}
    args = example_instance(function.get("parameters") or {"type": "object"})
    name = function.get("name", "tool")
    call = shapes.tool_call("call_fake_0", name, orjson.dumps(args).decode())
    return _Answer(None, tool_calls=[call], finish_reason="tool_calls")


def example_instance(schema: dict, root: dict | None = None, depth: int = 0):
    """A small instance valid against a simple JSON schema (object, array, scalars, enum,
    const, anyOf/oneOf/allOf, local `$ref`). Every listed property is filled in."""
    root = root if root is not None else schema
    if depth > 16 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return example_instance(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_instance(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "null"
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example_instance(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(schema.get("minItems", 1), 0)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        item = example_instance(schema.get("items") or {"type": "string"}, root, depth + 1)
        return [item] * count
    if kind == "string":
        return _example_string(schema)
    if kind in ("number", "integer"):
        return _example_number(schema, kind)
    if kind == "boolean":
        return False
    return None


def _example_string(schema: dict) -> str:
    formats = {
        "date-time": "1970-01-01T00:00:00Z",
        "date": "1970-01-01",
        "time": "00:00:00Z",
        "email": "fake@example.com",
        "uri": "https://example.com",
        "uuid": "00000000-0000-0000-0000-000000000000",
    }
    text = formats.get(schema.get("format", ""), "fake")
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(text) < low:
        text = text + "x" * (low - len(text))
    if high is not None:
        text = text[:high]
    return text


def _example_number(schema: dict, kind: str):
    value = 0
    if "minimum" in schema:
        value = schema["minimum"]
    elif "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"] + 1
    elif "maximum" in schema and schema["maximum"] < 0:
        value = schema["maximum"]
    elif "exclusiveMaximum" in schema and schema["exclusiveMaximum"] <= 0:
        value = schema["exclusiveMaximum"] - 1
    if kind == "integer":
        value = int(value) if value == int(value) else int(value) + 1
    return value


def _resolve(root: dict, ref: str) -> dict:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].strip("/").split("/"):
        if not part:
            continue
        key = part.replace("~1", "/").replace("~0", "~")
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node
