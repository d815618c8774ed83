"""Check a chat fine-tuning JSONL file the way OpenAI's fine-tuning API does, before uploading.

    report = validate_file("train.jsonl")        # or validate_lines(lines)
    report.ok, report.problems                   # each problem: (line, field, message, code)

The rules follow OpenAI's fine-tuning guide and its cookbook "Data preparation and analysis
for chat model fine-tuning", plus the checks its file validation adds for tools; each problem
says what is wrong where (the 1-based line, and a field path such as `messages[2].content`):

    json                      the line is not valid JSON
    data_type                 the line is not a JSON object
    unrecognized_key          a top-level key other than messages, tools, parallel_tool_calls,
                              functions
    missing_messages          no `messages` list, or an empty one
    message_type              a message that is not an object
    message_missing_key       a message without `role`, or without `content` (an assistant
                              message may instead carry `tool_calls` or `function_call`)
    message_unrecognized_key  a message key other than role, content, name, tool_calls,
                              tool_call_id, function_call, weight
    unrecognized_role         a role other than system, user, assistant, tool, function
    content_type              content neither a string nor a list of text parts (user messages
                              may also hold image_url parts); an assistant's must be a string
    missing_assistant         no assistant message to learn from
    weight                    `weight` other than 0 or 1, or on a message not the assistant's
    tool_calls                a tool call without an id, type "function", a function name, or
                              arguments that are a JSON string
    tool_call_id              a tool message without the `tool_call_id` it answers
    tools                     `tools` not a list of {"type": "function", "function": {"name"}}
    too_many_tokens           an example over the per-example limit (it would be truncated)
    too_few_examples          fewer than 10 examples (the API's minimum)
    total_tokens              the file over `max_total_tokens`, when one is set

Token counts are estimates: Keel ships no OpenAI tokenizer (tiktoken would download its
vocabulary), so, as the cookbook counts, each message costs 3 tokens plus its text, a name
1 more, and the reply 3; text counts one token per 4 ASCII characters and one per non-ASCII
character (CJK text is about one token per character), tools and tool calls by their JSON. On
English this is within ~10% of o200k and errs high. The default per-example limit, 65,536
tokens, is the training context of gpt-4o-mini and gpt-4o (gpt-3.5-turbo's is 16,385): pass
`token_limit` for another model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from keel.errors import InvalidRequest

TOKEN_LIMIT = 65_536
MIN_EXAMPLES = 10
TOP_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call",
                "weight")
ROLES = ("system", "user", "assistant", "tool", "function")


@dataclass
class Problem:
    line: int | None  # 1-based; None for the file as a whole
    field: str  # the path inside the line ("" for the line itself)
    message: str
    code: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.field}: {self.message}" if self.field else \
            f"{where}: {self.message}"


@dataclass
class Report:
    examples: int = 0
    total_tokens: int = 0
    max_example_tokens: int = 0
    token_limit: int = TOKEN_LIMIT
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "examples": self.examples, "total_tokens": self.total_tokens,
                "max_example_tokens": self.max_example_tokens, "token_limit": self.token_limit,
                "problems": [asdict(p) for p in self.problems]}


def validate_file(path: str | Path, *, token_limit: int = TOKEN_LIMIT,
                  min_examples: int = MIN_EXAMPLES,
                  max_total_tokens: int | None = None) -> Report:
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    with path.open("rb") as handle:
        return validate_lines(handle, token_limit=token_limit, min_examples=min_examples,
                              max_total_tokens=max_total_tokens)


def validate_lines(lines: Iterable[bytes | str], *, token_limit: int = TOKEN_LIMIT,
                   min_examples: int = MIN_EXAMPLES,
                   max_total_tokens: int | None = None) -> Report:
    report = Report(token_limit=token_limit)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        report.examples += 1
        problems: list[Problem] = []
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            report.problems.append(Problem(number, "", f"not valid JSON ({exc})", "json"))
            continue
        check_example(record, number, problems)
        report.problems.extend(problems)
        if isinstance(record, dict):
            tokens = estimate_tokens(record)
            report.total_tokens += tokens
            report.max_example_tokens = max(report.max_example_tokens, tokens)
            if tokens > token_limit:
                report.problems.append(Problem(
                    number, "messages", f"about {tokens:,} tokens, over the {token_limit:,} "
                    "tokens an example may hold (it would be truncated)", "too_many_tokens"))
    if report.examples < min_examples:
        report.problems.append(Problem(
            None, "", f"{report.examples} example(s): fine-tuning needs at least {min_examples}",
            "too_few_examples"))
    if max_total_tokens is not None and report.total_tokens > max_total_tokens:
        report.problems.append(Problem(
            None, "", f"about {report.total_tokens:,} tokens in all, over the "
            f"{max_total_tokens:,} allowed", "total_tokens"))
    return report


# -- one example -----------------------------------------------------------------------------


def check_example(record: Any, line: int, out: list[Problem]) -> None:
    def problem(field_path: str, message: str, code: str) -> None:
        out.append(Problem(line, field_path, message, code))

    if not isinstance(record, dict):
        problem("", f"expected a JSON object, got {_kind(record)}", "data_type")
        return
    for key in record:
        if key not in TOP_KEYS:
            problem(key, f"unrecognised key (allowed: {', '.join(TOP_KEYS)})",
                    "unrecognized_key")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        problem("messages", "expected a non-empty list of messages", "missing_messages")
    else:
        for index, message in enumerate(messages):
            _check_message(message, f"messages[{index}]", problem)
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            problem("messages", "no assistant message: nothing to learn from",
                    "missing_assistant")
    if "tools" in record:
        _check_tools(record["tools"], problem)


def _check_message(message: Any, where: str, problem) -> None:
    if not isinstance(message, dict):
        problem(where, f"expected a message object, got {_kind(message)}", "message_type")
        return
    for key in message:
        if key not in MESSAGE_KEYS:
            problem(f"{where}.{key}", "unrecognised message key", "message_unrecognized_key")
    role = message.get("role")
    if "role" not in message:
        problem(f"{where}.role", "missing", "message_missing_key")
    elif role not in ROLES:
        problem(f"{where}.role", f"unrecognised role {role!r} (allowed: {', '.join(ROLES)})",
                "unrecognized_role")
    calls = message.get("tool_calls") or message.get("function_call")
    if "content" not in message or (message["content"] is None and not calls):
        if not (role == "assistant" and calls):
            problem(f"{where}.content", "missing", "message_missing_key")
    elif message["content"] is not None:
        _check_content(message["content"], role, f"{where}.content", problem)
    if "weight" in message:
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            problem(f"{where}.weight", f"expected 0 or 1, got {message['weight']!r}", "weight")
        elif role != "assistant":
            problem(f"{where}.weight", "only assistant messages may carry a weight", "weight")
    if "tool_calls" in message:
        _check_tool_calls(message["tool_calls"], f"{where}.tool_calls", problem)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        problem(f"{where}.tool_call_id", "a tool message must name the tool call it answers",
                "tool_call_id")


def _check_content(content: Any, role: Any, where: str, problem) -> None:
    if isinstance(content, str):
        return
    if role == "assistant" or not isinstance(content, list):
        expected = "a string" if role == "assistant" else "a string or a list of content parts"
        problem(where, f"expected {expected}, got {_kind(content)}", "content_type")
        return
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url" and role == "user" and isinstance(
                (part.get("image_url") or {}).get("url"), str):
            continue
        allowed = "text or image_url" if role == "user" else "text"
        problem(f"{where}[{index}]", f"expected a {allowed} part, got {_part(part)}",
                "content_type")


def _check_tool_calls(calls: Any, where: str, problem) -> None:
    if not isinstance(calls, list) or not calls:
        problem(where, "expected a non-empty list of tool calls", "tool_calls")
        return
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        if not isinstance(call, dict):
            problem(at, f"expected an object, got {_kind(call)}", "tool_calls")
            continue
        if not isinstance(call.get("id"), str) or not call["id"]:
            problem(f"{at}.id", "missing", "tool_calls")
        if call.get("type") != "function":
            problem(f"{at}.type", f"expected 'function', got {call.get('type')!r}",
                    "tool_calls")
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"]:
            problem(f"{at}.function.name", "missing", "tool_calls")
            continue
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            problem(f"{at}.function.arguments", "expected a JSON string", "tool_calls")
            continue
        try:
            orjson.loads(arguments)
        except orjson.JSONDecodeError:
            problem(f"{at}.function.arguments", "not valid JSON", "tool_calls")


def _check_tools(tools: Any, problem) -> None:
    if not isinstance(tools, list) or not tools:
        problem("tools", "expected a non-empty list of tools", "tools")
        return
    for index, tool in enumerate(tools):
        at = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            problem(f"{at}.type", "expected a tool of type 'function'", "tools")
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"]:
            problem(f"{at}.function.name", "missing", "tools")
        elif "parameters" in function and not isinstance(function["parameters"], dict):
            problem(f"{at}.function.parameters", "expected a JSON schema object", "tools")


# -- token estimate --------------------------------------------------------------------------


def estimate_tokens(record: dict) -> int:
    """About how many tokens an example costs (see the module docstring for how)."""
    total = 3  # the reply's priming
    for message in record.get("messages") or ():
        if not isinstance(message, dict):
            continue
        total += 3 + (1 if message.get("name") else 0)
        content = message.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            total += sum(text_tokens(p["text"]) if isinstance(p, dict)
                         and isinstance(p.get("text"), str) else 85 for p in content)
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                total += text_tokens(orjson.dumps(message[key]).decode())
    if record.get("tools"):
        total += text_tokens(orjson.dumps(record["tools"]).decode())
    return total


def text_tokens(text: str) -> int:
    ascii_chars = sum(1 for c in text if c < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "a value")


def _part(part: Any) -> str:
    if isinstance(part, dict):
        return f"a {part.get('type')!r} part"
    return _kind(part)
