"""The fine-tuning JSONL validator: a good file passes; a file breaking one rule reports exactly
that rule, at the line and field where it is broken (one case per rule)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from keel.cli.distill import distill_group
from keel.cli.main import KeelGroup
from keel.distill.validate import (
    TOKEN_LIMIT,
    estimate_tokens,
    text_tokens,
    validate_file,
)

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def plain(i: int = 0) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": f"What is {i} + {i}?"},
                         {"role": "assistant", "content": str(2 * i), "weight": 1}]}


def with_tools() -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "name": "bot"}],
        "tools": [TOOL], "parallel_tool_calls": False}


def good() -> list[dict]:
    return [plain(i) for i in range(9)] + [with_tools()]


def write(tmp_path, records: list, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))
    return str(path)


def test_a_good_file_passes(tmp_path):
    report = validate_file(write(tmp_path, good()))
    assert report.ok, [str(p) for p in report.problems]
    assert report.examples == 10 and report.token_limit == TOKEN_LIMIT == 65_536
    assert 0 < report.max_example_tokens < report.total_tokens


def bad(index: int, change) -> list:
    records = good()
    records[index] = change(records[index])
    return records


def with_message(i: int, **fields):
    def change(record):
        record["messages"][i] = {**record["messages"][i], **fields}
        return record
    return change


def without(i: int, key: str):
    def change(record):
        record["messages"][i].pop(key)
        return record
    return change


# (rule, a change to one line of the good file, (line, field) it must be reported at)
CASES = [
    ("json", bad(2, lambda r: '{"messages": [}'), (3, "")),
    ("data_type", bad(2, lambda r: [r]), (3, "")),
    ("unrecognized_key", bad(0, lambda r: {**r, "prompt": "x"}), (1, "prompt")),
    ("missing_messages", bad(4, lambda r: {"messages": []}), (5, "messages")),
    ("message_type", bad(1, lambda r: {"messages": [*r["messages"], "hi"]}),
     (2, "messages[3]")),
    ("message_missing_key", bad(1, without(1, "content")), (2, "messages[1].content")),
    ("message_unrecognized_key", bad(0, with_message(1, metadata={"a": 1})),
     (1, "messages[1].metadata")),
    ("unrecognized_role", bad(3, with_message(0, role="developer")), (4, "messages[0].role")),
    ("content_type", bad(6, with_message(2, content=[{"type": "text", "text": "4"}])),
     (7, "messages[2].content")),
    ("missing_assistant", bad(5, lambda r: {"messages": r["messages"][:2]}), (6, "messages")),
    ("weight", bad(0, with_message(1, weight=1)), (1, "messages[1].weight")),
    ("tool_calls", bad(9, with_message(1, tool_calls=[{**CALL, "function": {
        "name": "get_weather", "arguments": "{city: Paris"}}])),
     (10, "messages[1].tool_calls[0].function.arguments")),
    ("tool_call_id", bad(9, without(2, "tool_call_id")), (10, "messages[2].tool_call_id")),
    ("tools", bad(9, lambda r: {**r, "tools": [{"type": "function", "function": {}}]}),
     (10, "tools[0].function.name")),
    ("too_many_tokens", bad(8, with_message(1, content="word " * 60_000)), (9, "messages")),
    ("too_few_examples", good()[:9], (None, "")),
]


@pytest.mark.parametrize("rule, records, where", CASES, ids=[c[0] for c in CASES])
def test_each_rule_reports_what_is_wrong_where(tmp_path, rule, records, where):
    report = validate_file(write(tmp_path, records))
    assert [(p.code, p.line, p.field) for p in report.problems] == [(rule, *where)], \
        [str(p) for p in report.problems]
    assert report.problems[0].message and not report.ok


def test_total_tokens_limit_when_set(tmp_path):
    path = write(tmp_path, good())
    total = validate_file(path).total_tokens
    assert validate_file(path, max_total_tokens=total).ok
    problems = validate_file(path, max_total_tokens=total - 1).problems
    assert [(p.code, p.line) for p in problems] == [("total_tokens", None)]
    assert f"{total:,}" in problems[0].message


def test_the_token_limit_is_configurable(tmp_path):
    path = write(tmp_path, good())
    biggest = validate_file(path).max_example_tokens
    report = validate_file(path, token_limit=biggest - 1)
    assert {p.code for p in report.problems} == {"too_many_tokens"}


def test_token_estimate():
    assert text_tokens("abcdefgh") == 2 and text_tokens("日本語") == 3
    # 3 to prime the reply, 3 a message, plus the text
    assert estimate_tokens({"messages": [{"role": "user", "content": "abcd"}]}) == 3 + 3 + 1
    assert estimate_tokens({"messages": [{"role": "user", "content": "abcd", "name": "x"}]}) == 8


def test_problems_name_line_and_field_in_text(tmp_path):
    report = validate_file(write(tmp_path, CASES[7][1]))
    assert str(report.problems[0]) == (
        "line 4: messages[0].role: unrecognised role 'developer' (allowed: system, user, "
        "assistant, tool, function)")


def test_cli_validate(tmp_path):
    cli = KeelGroup()
    cli.add_command(distill_group)
    runner = CliRunner()
    ok = runner.invoke(cli, ["distill", "validate", write(tmp_path, good())])
    assert ok.exit_code == 0 and "10 examples" in ok.output and ok.output.strip().endswith(
        "valid")
    broken = runner.invoke(cli, ["distill", "validate", write(tmp_path, CASES[5][1], "b.jsonl"),
                                 "--json"])
    assert broken.exit_code == 1
    report = json.loads(broken.output)
    assert report["problems"] == [{"line": 2, "field": "messages[1].content",
                                   "message": "missing", "code": "message_missing_key"}]
    small = runner.invoke(cli, ["distill", "validate", write(tmp_path, good()[:3], "s.jsonl"),
                                "--min-examples", "3"])
    assert small.exit_code == 0
