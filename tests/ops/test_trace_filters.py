"""Finding traces by who asked: key, end user, session — with model, status and a time window —
through `list_traces` and `keel traces list` / `show`."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner

from keel.cli.main import cli
from keel.errors import InvalidRequest
from keel.ops.trace_queries import list_traces
from keel.ops.traces import TraceRecorder
from tests.ops.helpers import make_trace, tracing

HOUR = 3600.0

# (key, user, session, model, status, hours ago)
SPECS = [
    ("key_a", "alice", "s1", "gpt-4o-mini", 200, 5),  # 0
    ("key_a", "bob", "s1", "smollm2", 200, 4),        # 1
    ("key_b", "alice", "s2", "gpt-4o-mini", 429, 3),  # 2
    ("key_b", None, None, "smollm2", 502, 2),         # 3
    (None, "carol", "s3", "gpt-4o-mini", 200, 1),     # 4
]


@pytest.fixture
def recorded(store):
    now = time.time()
    made = []
    for n, (key, user, session, model, status, hours) in enumerate(SPECS):
        trace = make_trace(n, model=model, status=status, key_id=key, user=user,
                           session_id=session, cost_usd=0.0125 if key else None,
                           key_metadata={"team": "search", "env": "prod"} if key else None)
        trace.started_at = now - hours * HOUR
        made.append(trace)
    recorder = TraceRecorder(store, tracing())
    for trace in made:
        recorder.submit(trace)
    recorder.close()
    return made


def picked(rows, recorded) -> list[int]:
    index = {t.id: i for i, t in enumerate(recorded)}
    return [index[r["id"]] for r in rows]


@pytest.mark.parametrize("filters, expected", [
    ({"key_id": "key_a"}, [1, 0]),
    ({"key_id": "key_b"}, [3, 2]),
    ({"key_id": "key_zzz"}, []),
    ({"user": "alice"}, [2, 0]),
    ({"user": "carol"}, [4]),
    ({"session_id": "s1"}, [1, 0]),
    ({"session_id": "s3"}, [4]),
    ({"model": "smollm2"}, [3, 1]),
    ({"status": "error"}, [3, 2]),
    ({"status": 200}, [4, 1, 0]),
    ({"since": -2.5}, [4, 3]),
    ({"until": -2.5}, [2, 1, 0]),
    ({"since": -4.5, "until": -1.5}, [3, 2, 1]),
    # Filters combine with AND.
    ({"key_id": "key_a", "user": "alice"}, [0]),
    ({"key_id": "key_b", "status": "ok"}, []),
    ({"user": "alice", "model": "gpt-4o-mini", "since": -3.5}, [2]),
    ({"session_id": "s1", "until": -4.5}, [0]),
])
def test_each_filter_narrows_the_list(store, recorded, filters, expected):
    now, filters = time.time(), dict(filters)  # the parameters are shared by both backends
    for bound in ("since", "until"):
        if bound in filters:
            filters[bound] = now + filters[bound] * HOUR
    assert picked(list_traces(store, **filters), recorded) == expected


def test_rows_carry_who_asked_and_the_cost(store, recorded):
    row = list_traces(store, key_id="key_b", status=429)[0]
    assert row["key_id"] == "key_b" and row["end_user"] == "alice" and row["session_id"] == "s2"
    assert row["key_metadata"] == {"team": "search", "env": "prod"}
    assert row["cost_usd"] == pytest.approx(0.0125)


def test_a_bad_status_still_refuses(store):
    with pytest.raises(InvalidRequest, match="status"):
        list_traces(store, user="alice", status="teapot")


# -- the CLI ---------------------------------------------------------------------------------


def run(*args: str):
    return CliRunner().invoke(cli, ["traces", *args], catch_exceptions=False)


def listed(db_url, *args: str) -> list[dict]:
    result = run("list", "--db", db_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_filters(db_url, recorded):
    assert picked(listed(db_url, "--key", "key_a"), recorded) == [1, 0]
    assert picked(listed(db_url, "--user", "alice"), recorded) == [2, 0]
    assert picked(listed(db_url, "--session", "s1"), recorded) == [1, 0]
    assert picked(listed(db_url, "--until", "150m"), recorded) == [2, 1, 0]
    assert picked(listed(db_url, "--since", "270m", "--until", "90m"), recorded) == [3, 2, 1]
    assert picked(listed(db_url, "--key", "key_b", "--model", "smollm2",
                         "--status", "502"), recorded) == [3]


def test_cli_table_shows_who_asked_when_some_trace_has_it(db_url, recorded):
    result = run("list", "--db", db_url)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header[:5] == ["id", "time", "key", "user", "session"]
    row_of_3 = next(line for line in lines if recorded[3].id in line)
    assert "key_b" in row_of_3 and row_of_3.split()[4:6] == ["-", "-"]  # no user, no session
    row_of_4 = next(line for line in lines if recorded[4].id in line)
    assert row_of_4.split()[3:6] == ["-", "carol", "s3"]


def test_cli_table_leaves_the_columns_out_when_no_trace_has_them(db_url, recorded):
    result = run("list", "--db", db_url, "--key", "key_b", "--status", "502")
    header = result.output.splitlines()[0].split()
    assert header[:4] == ["id", "time", "key", "model"]  # only the key: no user, no session
    result = run("list", "--db", db_url, "--model", "gpt-4o-mini", "--since", "90m")
    assert "key" not in result.output.splitlines()[0].split()  # the anonymous trace only
    assert "carol" in result.output and "s3" in result.output


def test_cli_show_prints_key_user_session_and_cost(db_url, recorded):
    result = run("show", recorded[2].id, "--db", db_url)
    assert result.exit_code == 0, result.output
    summary = _summary(result.output)
    assert summary["key"] == "key_b"
    assert summary["key metadata"] == "team=search env=prod"
    assert summary["user"] == "alice" and summary["session"] == "s2"
    assert summary["cost"] == "$0.012500"
    anonymous = _summary(run("show", recorded[4].id, "--db", db_url).output)
    assert anonymous["key"] == anonymous["key metadata"] == anonymous["cost"] == "-"
    assert anonymous["user"] == "carol" and anonymous["session"] == "s3"


def _summary(output: str) -> dict[str, str]:
    """The label/value grid at the top of `show` (labels are separated by two spaces or more)."""
    head = output.split("\n\n")[0]
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in head.splitlines())


def test_cli_bad_age_names_the_option(db_url, recorded):
    result = run("list", "--db", db_url, "--until", "last week")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --until: expected an age like 30s, 10m, 2h or 1d, got 'last week'")
