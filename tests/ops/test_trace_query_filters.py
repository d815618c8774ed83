"""The console's trace filters in `list_traces`: provider, feedback (latest sentiment), text
search in the stored bodies, and keyset pages — on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import time

import pytest

from keel.errors import InvalidRequest
from keel.ops.feedback import add_feedback
from keel.ops.trace_queries import cursor, list_traces, parse_cursor
from keel.ops.traces import TraceRecorder
from tests.ops.helpers import make_trace, tracing


@pytest.fixture
def recorded(store):
    """Six traces a minute apart, oldest first; 0-2 on provider `upstream`, 3-5 on `other`."""
    now = time.time()
    made = []
    for i in range(6):
        trace = make_trace(i)
        trace.provider = "upstream" if i < 3 else "other"
        trace.started_at = now - 60 * (6 - i)
        made.append(trace)
    made[1].request["messages"][0]["content"] = 'Where is order "ORD-42" 100%_done?\nThanks'
    made[2].response = {"choices": [{"message": {"content": "The Lighthouse keeper"}}]}
    made[3].error = {"message": "upstream said TEAPOT", "type": "upstream_error"}
    recorder = TraceRecorder(store, tracing())
    for trace in made:
        recorder.submit(trace)
    recorder.close()
    return made


def ids(rows):
    return [r["id"] for r in rows]


def test_provider_filter(store, recorded):
    assert ids(list_traces(store, provider="other")) == [t.id for t in reversed(recorded[3:])]
    assert list_traces(store, provider="nobody") == []


def test_feedback_filter_reads_the_latest_feedback(store, recorded):
    t = [r.id for r in recorded]
    add_feedback(store, t[0], 1)
    add_feedback(store, t[1], 1)
    add_feedback(store, t[1], -1)  # changed their mind: the latest says down
    add_feedback(store, t[2], 2, scale="rating")  # a 2 of 5: down
    add_feedback(store, t[3], 5)  # rating 5: up
    add_feedback(store, t[4], 1, scale="rating")  # a rating of 1: down, not thumbs up
    assert set(ids(list_traces(store, feedback="any"))) == set(t[:5])
    assert ids(list_traces(store, feedback="none")) == [t[5]]
    assert ids(list_traces(store, feedback="up")) == [t[3], t[0]]
    assert ids(list_traces(store, feedback="down")) == [t[4], t[2], t[1]]
    assert ids(list_traces(store, feedback="down", provider="upstream")) == [t[2], t[1]]
    with pytest.raises(InvalidRequest, match="feedback"):
        list_traces(store, feedback="meh")


def test_text_search_in_request_response_and_error(store, recorded):
    t = [r.id for r in recorded]
    assert ids(list_traces(store, text="lighthouse")) == [t[2]]  # case-insensitive
    assert ids(list_traces(store, text="teapot")) == [t[3]]  # in the error
    # Quotes, newlines and LIKE wildcards are matched literally, as the text has them.
    assert ids(list_traces(store, text='order "ORD-42"')) == [t[1]]
    assert ids(list_traces(store, text="100%_done?\nThanks")) == [t[1]]
    assert list_traces(store, text="100%done") == []
    assert list_traces(store, text="no such words") == []
    # An id prefix: ids are time-ordered, so traces made in the same millisecond share their
    # first ~14 characters; the prefix must be one that names t[4] alone.
    prefix = next(t[4][:n] for n in range(14, len(t[4]) + 1)
                  if sum(other.startswith(t[4][:n]) for other in t) == 1)
    assert ids(list_traces(store, text=prefix)) == [t[4]]
    assert len(list_traces(store, text="   ")) == 6  # blank: no filter
    with pytest.raises(InvalidRequest, match="text"):
        list_traces(store, text="x" * 201)


def test_pages_by_cursor(store, recorded):
    first = list_traces(store, limit=4)
    rest = list_traces(store, limit=4, before=parse_cursor(cursor(first[-1])))
    assert ids(first) + ids(rest) == [t.id for t in reversed(recorded)]
    # A trace arriving meanwhile does not shift the next page.
    late = make_trace(9)
    recorder = TraceRecorder(store, tracing())
    recorder.submit(late)
    recorder.close()
    assert ids(list_traces(store, limit=4, before=parse_cursor(cursor(first[-1])))) == ids(rest)


def test_bad_cursor(store):
    for bad in ("", "nope", "1.5~", "abc~0190", "1.5~%"):
        with pytest.raises(InvalidRequest, match="cursor"):
            parse_cursor(bad)
