"""Reading traces back: list filters and order, show by id or unique prefix."""

from __future__ import annotations

import time

import pytest

from keel.errors import InvalidRequest, NotFound
from keel.ops.trace_queries import get_trace, list_traces
from keel.ops.traces import TraceRecorder
from tests.ops.helpers import make_trace, tracing


@pytest.fixture
def recorded(store):
    """Five traces, oldest first: three gpt-4o-mini (one 429), two smollm2 (one 502)."""
    specs = [("gpt-4o-mini", 200), ("smollm2", 200), ("gpt-4o-mini", 429),
             ("smollm2", 502), ("gpt-4o-mini", 200)]
    now = time.time()
    made = []
    for i, (model, status) in enumerate(specs):
        trace = make_trace(i, model=model, status=status)
        trace.started_at = now - 3600 * (len(specs) - i)  # an hour apart, the last 1 h ago
        made.append(trace)
    recorder = TraceRecorder(store, tracing())
    for trace in made:
        recorder.submit(trace)
    recorder.close()
    return made


def test_list_is_newest_first_and_limited(store, recorded):
    rows = list_traces(store)
    assert [r["id"] for r in rows] == [t.id for t in reversed(recorded)]
    assert [r["id"] for r in list_traces(store, limit=2)] == [recorded[4].id, recorded[3].id]


def test_list_rows_are_summaries(store, recorded):
    row = list_traces(store, limit=1)[0]
    assert "request" not in row and "response" not in row and "spans" not in row
    assert row["model"] == "gpt-4o-mini" and row["status"] == 200 and row["total_tokens"] == 19


def test_filter_by_model(store, recorded):
    assert {r["model"] for r in list_traces(store, model="smollm2")} == {"smollm2"}
    assert len(list_traces(store, model="smollm2")) == 2
    assert list_traces(store, model="nope") == []


@pytest.mark.parametrize("status, expected", [(429, [2]), ("502", [3]), ("ok", [4, 1, 0]),
                                              ("error", [3, 2])])
def test_filter_by_status(store, recorded, status, expected):
    rows = list_traces(store, status=status)
    assert [r["id"] for r in rows] == [recorded[i].id for i in expected]


def test_a_bad_status_filter_is_a_clean_error(store):
    with pytest.raises(InvalidRequest, match="status"):
        list_traces(store, status="teapot")


def test_filter_since(store, recorded):
    rows = list_traces(store, since=time.time() - 2.5 * 3600)
    assert [r["id"] for r in rows] == [recorded[4].id, recorded[3].id]


def test_show_by_id_and_by_unique_prefix(store, recorded):
    target = recorded[2]
    assert get_trace(store, target.id)["spans"][0]["name"] == "json_mode"
    # Ids share a time prefix; the random tail makes a longer prefix unique.
    assert get_trace(store, target.id[:-2])["id"] == target.id


def test_show_unknown_and_ambiguous(store, recorded):
    with pytest.raises(NotFound):
        get_trace(store, "ffffffffffff")
    with pytest.raises(NotFound):
        get_trace(store, "%")  # not an id: never a LIKE pattern
    with pytest.raises(InvalidRequest, match="ambiguous"):
        get_trace(store, "0")
