"""json_valid and json_schema."""

from __future__ import annotations

import json

import pytest

from keel.errors import ConfigError
from keel.evals.graders import make_grader
from tests.evals.graders.helpers import output, sample

SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


async def run(kind, text, **options):
    return await make_grader(kind, None, options, None).grade(sample(), output(text))


@pytest.mark.parametrize("text,extract,passed", [
    ('{"a": 1}', False, True),
    ("[1, 2]", False, True),
    ('```json\n{"a": 1}\n```', False, False),
    ('```json\n{"a": 1}\n```', True, True),
    ('Here you go: {"a": 1}', True, True),
    ("{'a': 1}", True, False),
])
async def test_json_valid(text, extract, passed):
    grade = await run("json_valid", text, extract=extract)
    assert grade.passed is passed
    if not passed:
        assert "not valid JSON" in grade.details["problem"]


async def test_json_schema_inline():
    assert (await run("json_schema", '{"name": "Ada", "age": 36}', schema=SCHEMA)).passed
    bad = await run("json_schema", '{"name": "Ada", "age": -1}', schema=SCHEMA)
    assert not bad.passed and bad.details["problems"] == ["age: -1 is less than the minimum of 0"]
    missing = await run("json_schema", '{"age": 3}', schema=SCHEMA)
    assert "(root): 'name' is a required property" in missing.details["problems"]
    assert not (await run("json_schema", "not json", schema=SCHEMA)).passed


async def test_json_schema_from_a_file_is_kept_whole_in_the_audit(tmp_path):
    path = tmp_path / "person.json"
    path.write_text(json.dumps(SCHEMA))
    grader = make_grader("json_schema", None, {"schema": str(path)}, None)
    assert (await grader.grade(sample(), output('{"name": "Ada", "age": 1}'))).passed
    assert grader.describe()["schema"] == SCHEMA
    assert grader.describe()["options"]["schema"] == str(path)


def test_json_schema_errors_at_build_time(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        make_grader("json_schema", None, {"schema": str(tmp_path / "none.json")}, None)
    with pytest.raises(ConfigError, match="not valid"):
        make_grader("json_schema", None, {"schema": {"type": "no-such-type"}}, None)
