"""From an OpenAI Chat Completions body to a `Plan` the embedded engine can run.

Everything the engine cannot honour is refused here with `UnsupportedParameter` naming the
field, and every limit (context size, JSON budget) is checked before a token is generated, so
the HTTP edge can answer 400 before a stream starts.

Two steps, on two threads. `Planner.check` reads only the body (no model access, no
tokenising), so it is cheap enough for the event loop and refuses most bad requests at the
edge. `Planner.plan` renders and tokenises the prompt and sizes the budgets; it runs once per
request, on the worker thread, just before decoding (the provider's job), so the event loop
never tokenises while the worker evaluates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from keel.errors import InvalidRequest, UnsupportedParameter
from keel.providers.local import json_mode
from keel.providers.local.json_mode import compact_dumps


@dataclass(frozen=True)
class SamplingDefaults:
    """Used where the request leaves a parameter out (see docs/local-engine.md)."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float


@dataclass
class Plan:
    prompt_tokens: list[int]
    max_tokens: int
    seed: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None
    # JSON budget: None when the output is not JSON; else the reserve in tokens (json_mode).
    json_reserve: int | None = None
    tool_mode: str = "none"  # "none" | "forced" | "auto"
    tool_names: tuple[str, ...] = ()


# Parameters the engine has no way to honour: refused when present with a meaningful value.
_UNSUPPORTED = {
    "logprobs": "logprobs are not available on the local engine",
    "top_logprobs": "logprobs are not available on the local engine",
    "audio": "audio output is not available on the local engine",
    "prediction": "predicted outputs are not available on the local engine",
    "web_search_options": "web search is not available on the local engine",
    "functions": "the deprecated `functions` field is not supported; use `tools`",
    "function_call": "the deprecated `function_call` field is not supported; use `tool_choice`",
    "guided_choice": "guided_choice is not available on the local engine; use a json_schema "
                     "response_format with an enum",
    "guided_regex": "guided_regex is not available on the local engine; use a json_schema "
                    "response_format",
}

# Sampling fields and their allowed ranges, checked in `Planner.check`.
_RANGES = (
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
)


class Planner:
    """Builds plans for one loaded model; all model access goes through the callables given."""

    def __init__(
        self,
        *,
        n_ctx: int,
        n_vocab: int,
        defaults: SamplingDefaults,
        format_prompt: Callable[[list[dict]], tuple[str, list[str]]],
        tokenize: Callable[[str], list[int]],
        count_tokens: Callable[[str], int],
    ) -> None:
        self.n_ctx = n_ctx
        self.n_vocab = n_vocab
        self.defaults = defaults
        self.format_prompt = format_prompt
        self.tokenize = tokenize
        self.count_tokens = count_tokens

    def check(self, body: dict) -> tuple[str, list[dict], dict]:
        """Refuse what the body alone shows the engine cannot honour; model-free and cheap.

        Returns (tool mode, the functions offered, the response format) for `plan`.
        """
        _refuse_unsupported(body)
        render_messages(body.get("messages") or [])  # refuses content parts it cannot read
        tool_mode, functions = _tool_mode(body)
        response_format = body.get("response_format") or {"type": "text"}
        kind = response_format.get("type", "text")
        if kind not in ("text", "json_object", "json_schema"):
            raise UnsupportedParameter(
                f"response_format type {kind!r} is not supported on the local engine",
                param="response_format.type",
            )
        if tool_mode == "auto" and kind != "text":
            tool_mode, functions = "none", []  # one grammar per request: the asked-for format wins
        if _stops(body.get("stop")) and (tool_mode == "forced" or kind != "text"):
            # A stop string cannot cut grammar-bound output without breaking the JSON, and
            # ignoring it silently would hide that the answer was not cut where asked.
            what = "a tool call" if tool_mode == "forced" else f"response_format {kind!r}"
            raise UnsupportedParameter(
                f"stop strings cannot be applied to {what} on the local engine: the grammar "
                "decides where the JSON ends; remove stop",
                param="stop",
            )
        for name, low, high in _RANGES:
            _number(body, name, 0.0, low, high)
        _max_tokens_field(body)
        self._logit_bias(body.get("logit_bias"))
        return tool_mode, functions, response_format

    def plan(self, body: dict) -> Plan:
        """The whole plan: tokenises, so it runs on the worker thread (see the module doc)."""
        tool_mode, functions, response_format = self.check(body)
        messages = render_messages(body.get("messages") or [])
        if functions:
            messages = _with_tool_instructions(messages, functions, forced=tool_mode == "forced")
        elif response_format.get("type") in ("json_object", "json_schema"):
            messages = _with_json_instructions(messages, response_format)
        prompt, template_stops = self.format_prompt(messages)
        prompt_tokens = self.tokenize(prompt)
        grammar, reserve = self._grammar(response_format, tool_mode, functions)
        max_tokens = self._max_tokens(body, len(prompt_tokens))
        if reserve is not None and max_tokens < reserve + 1:
            raise json_budget_error(max_tokens, reserve + 1)
        d = self.defaults
        return Plan(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            seed=_seed(body.get("seed")),
            temperature=_number(body, "temperature", d.temperature, 0.0, 2.0),
            top_p=_number(body, "top_p", d.top_p, 0.0, 1.0),
            top_k=d.top_k,
            min_p=d.min_p,
            repeat_penalty=d.repeat_penalty,
            presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            logit_bias=self._logit_bias(body.get("logit_bias")),
            stop=_stops(body.get("stop")) + template_stops,
            grammar=grammar,
            json_reserve=reserve,
            tool_mode=tool_mode,
            tool_names=tuple(fn["name"] for fn in functions),
        )

    def _grammar(self, response_format: dict, tool_mode: str, functions: list[dict]):
        """(GBNF text or None, JSON reserve in tokens or None)."""
        if tool_mode == "forced":
            schema = json_mode.tool_call_schema(functions)
            return json_mode.tool_call_gbnf(functions), self._reserve(schema)
        if tool_mode == "auto":
            schema = json_mode.tool_call_schema(functions)
            return json_mode.call_or_text_gbnf(functions), self._reserve(schema)
        kind = response_format.get("type", "text")
        if kind == "text":
            return None, None
        if kind == "json_object":
            return json_mode.JSON_OBJECT_GBNF, 0
        if kind == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
            if not schema:
                return json_mode.JSON_OBJECT_GBNF, 0
            try:
                grammar = json_mode.schema_gbnf(schema)
            except Exception as exc:  # the converter raises plain errors on schemas it cannot map
                raise UnsupportedParameter(
                    f"the local engine cannot turn this JSON schema into a grammar: {exc}",
                    param="response_format.json_schema.schema",
                ) from exc
            return grammar, self._reserve(schema)
        raise UnsupportedParameter(
            f"response_format type {kind!r} is not supported on the local engine",
            param="response_format.type",
        )

    def _reserve(self, schema: dict) -> int:
        # Closing mode writes keys a token or two less efficiently than the tokenizer would.
        tokens = self.count_tokens(compact_dumps(json_mode.minimal_instance(schema)))
        return tokens + (tokens + 1) // 2

    def _max_tokens(self, body: dict, prompt_len: int) -> int:
        room = self.n_ctx - prompt_len
        if room <= 0:
            raise InvalidRequest(
                f"the messages take {prompt_len} tokens, more than the local model's context of "
                f"{self.n_ctx} tokens leaves room for; shorten them",
                param="messages",
                code="context_length_exceeded",
            )
        param, requested = _max_tokens_field(body)
        if requested is None:
            return room
        if requested > room:
            raise InvalidRequest(
                f"the messages take {prompt_len} tokens and {param} asks for {requested} more, "
                f"beyond the local model's context of {self.n_ctx} tokens; at most {room} fit",
                param=param,
                code="context_length_exceeded",
            )
        return requested

    def _logit_bias(self, raw: dict | None) -> dict[int, float]:
        bias: dict[int, float] = {}
        for key, value in (raw or {}).items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                token = -1
            if not 0 <= token < self.n_vocab:
                raise InvalidRequest(
                    f"logit_bias key {key!r} is not a token id of the local model", param="logit_bias"
                )
            bias[token] = max(-100.0, min(100.0, float(value)))
        return bias


def _max_tokens_field(body: dict) -> tuple[str, int | None]:
    """(the field that sets the limit, its value); `max_completion_tokens` wins."""
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    requested = body.get(param)
    valid = isinstance(requested, int) and not isinstance(requested, bool) and requested >= 1
    if requested is not None and not valid:
        raise InvalidRequest(f"{param} must be a positive integer", param=param)
    return param, requested


def json_budget_error(max_tokens: int, needed: int | None = None) -> InvalidRequest:
    if needed:
        why = f"the smallest answer valid for the schema takes about {needed} tokens"
    else:
        why = "the engine began closing the JSON as the budget ran low, and it still did not fit"
    return InvalidRequest(
        f"max_tokens={max_tokens} is too small for valid JSON: {why}; raise max_tokens",
        param="max_tokens",
        code="json_budget_exceeded",
    )


def _refuse_unsupported(body: dict) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise UnsupportedParameter("the local engine generates one choice per request: n must be 1", param="n")
    for name, why in _UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise UnsupportedParameter(why, param=name)
    if "audio" in (body.get("modalities") or []):
        raise UnsupportedParameter("audio output is not available on the local engine", param="modalities")


def _tool_mode(body: dict) -> tuple[str, list[dict]]:
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice is only allowed when tools are given", param="tool_choice")
        return "none", []
    functions = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise UnsupportedParameter(
                f"tool type {tool.get('type')!r} is not supported on the local engine; use 'function'",
                param=f"tools[{i}].type",
            )
        functions.append(tool["function"])
    if choice is None or choice == "auto":
        return "auto", functions
    if choice == "none":
        return "none", []
    if choice == "required":
        return "forced", functions
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    chosen = [fn for fn in functions if fn["name"] == name]
    if not chosen:
        raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    return "forced", chosen


def _with_tool_instructions(messages: list[dict], functions: list[dict], forced: bool) -> list[dict]:
    lines = [
        "You can call these tools. To call one, answer with only a JSON object "
        '{"name": <tool name>, "arguments": {...}} and nothing else.'
    ]
    for fn in functions:
        params = compact_dumps(fn.get("parameters") or {})
        lines.append(f"- {fn['name']}: {fn.get('description', '')} Parameters: {params}")
    if forced:
        lines.append("Call a tool now.")
    return _with_system_text(messages, "\n".join(lines))


def _with_json_instructions(messages: list[dict], response_format: dict) -> list[dict]:
    # The grammar guarantees the shape; telling a small model the schema makes the values sensible.
    schema = (response_format.get("json_schema") or {}).get("schema")
    text = "Answer with only a JSON object"
    text += f" that matches this JSON schema: {compact_dumps(schema)}" if schema else "."
    return _with_system_text(messages, text)


def _with_system_text(messages: list[dict], text: str) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": messages[0]["content"] + "\n\n" + text}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def render_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages -> plain {role, content: str} for a chat template."""
    out = []
    names = _call_names(messages)
    for i, message in enumerate(messages):
        role = message.get("role")
        content = _text(message.get("content"), f"messages[{i}].content")
        if role == "developer":
            role = "system"
        elif role in ("tool", "function"):
            # Chat templates of small models know no tool role: show the result as a user turn,
            # named after the function (the call id means nothing to the model).
            ref = names.get(message.get("tool_call_id")) or message.get("name") or "the tool"
            role, content = "user", f"Result of {ref}:\n{content}"
        if role == "assistant" and message.get("tool_calls"):
            # Prose, not the call's JSON: shown JSON, a small model copies it as its answer.
            calls = [_call_text(call) for call in message["tool_calls"]]
            content = "\n".join(filter(None, [content, *calls]))
        out.append({"role": role, "content": content})
    return out


def _call_names(messages: list[dict]) -> dict[str, str]:
    return {
        call.get("id"): (call.get("function") or {}).get("name")
        for m in messages if m.get("role") == "assistant"
        for call in m.get("tool_calls") or ()
    }


def _call_text(call: dict) -> str:
    fn = call.get("function") or {}
    return f"I called {fn.get('name', 'a tool')} with {fn.get('arguments') or '{}'}."


def _text(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text", ""))
        elif kind == "refusal":
            texts.append(part.get("refusal", ""))
        else:
            what = "images" if kind in ("image_url", "image") else "audio" if "audio" in str(kind) else repr(kind)
            raise UnsupportedParameter(
                f"the local engine reads text only; {what} content parts are not supported",
                param=f"{where}[{j}]",
            )
    return "\n".join(texts)


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    return [s for s in stops if s]


def _seed(seed) -> int:
    if seed is None:
        return random.SystemRandom().randrange(0, 2**32 - 1)
    # llama.cpp takes a uint32 and reads 0xFFFFFFFF as "pick at random": map every int to a
    # fixed seed outside that one value.
    return int(seed) % (2**32 - 1)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", param=name)
    return float(value)
