"""The recorder: traces reach the store off the request path, and nothing is lost silently."""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from keel.ops.trace_queries import get_trace
from keel.ops.traces import TraceRecorder
from keel.store.models import traces
from tests.ops.helpers import make_trace, tracing


def count_rows(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(traces)).scalar()


def test_writes_traces_with_spans_and_bodies(store):
    recorder = TraceRecorder(store, tracing()).start()
    trace = make_trace(7, stream=True, ttft_ms=3.5)
    recorder.submit(trace)
    assert recorder.flush(10)
    recorder.close()

    row = get_trace(store, trace.id)
    assert row["model"] == "gpt-4o-mini" and row["provider"] == "upstream"
    assert row["upstream_model"] == "gpt-4o-mini-2024" and row["stream"] is True
    assert row["status"] == 200 and row["system_fingerprint"] == "fp_test"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (17, 5, 22)
    assert row["ttft_ms"] == 3.5 and abs(row["latency_ms"] - trace.latency_ms) < 1e-6
    assert abs(row["created_at"] - trace.started_at) < 1e-3
    assert row["request"]["messages"][0]["content"] == "hello 7"
    assert row["response"]["choices"][0]["message"]["content"] == "hi 7"
    assert [(s["name"], s["depth"]) for s in row["spans"]] == [("json_mode", 0), ("provider", 1)]
    assert row["spans"][1]["attrs"] == {"attempt": 1}
    assert row["error"] is None
    assert recorder.stats() == {"written": 1, "dropped": 0, "pending": 0, "errors": 0}


def test_errors_are_recorded(store):
    recorder = TraceRecorder(store, tracing()).start()
    trace = make_trace(status=502)
    recorder.submit(trace)
    recorder.close()
    row = get_trace(store, trace.id)
    assert row["status"] == 502 and row["error"]["type"] == "upstream_error"
    assert row["response"] is None


def test_record_bodies_off_keeps_everything_but_the_bodies(store):
    recorder = TraceRecorder(store, tracing(record_bodies=False)).start()
    trace = make_trace()
    recorder.submit(trace)
    recorder.close()
    row = get_trace(store, trace.id)
    assert row["request"] is None and row["response"] is None
    assert row["total_tokens"] == 15 and len(row["spans"]) == 2


def test_bodies_that_are_not_plain_json_are_stored_anyway(store):
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    recorder = TraceRecorder(store, tracing()).start()
    trace = make_trace()
    trace.request = {"raw": b"bytes", "tags": ("a", "b"), "thing": Opaque(), 3: "int key"}
    recorder.submit(trace)
    recorder.close()
    assert get_trace(store, trace.id)["request"] == {
        "raw": "bytes", "tags": ["a", "b"], "thing": "<opaque>", "3": "int key",
    }


def test_close_writes_everything_pending(store):
    # A long interval: only close() can have written them.
    recorder = TraceRecorder(store, tracing(flush_interval_s=60, batch_size=100_000)).start()
    for i in range(1000):
        recorder.submit(make_trace(i))
    recorder.close()
    assert count_rows(store) == 1000
    assert recorder.stats() == {"written": 1000, "dropped": 0, "pending": 0, "errors": 0}


def test_a_full_buffer_drops_and_counts_without_blocking(store, caplog):
    recorder = TraceRecorder(store, tracing(buffer_size=5))  # not started: the writer is paused
    for i in range(8):
        assert recorder.submit(make_trace(i)) is None
    assert recorder.stats() == {"written": 0, "dropped": 3, "pending": 5, "errors": 0}

    with caplog.at_level(logging.WARNING, logger="keel.ops.traces"):
        recorder.start()
        assert recorder.flush(10)
        recorder.close()
    assert recorder.stats() == {"written": 5, "dropped": 3, "pending": 0, "errors": 0}
    assert count_rows(store) == 5
    assert any("dropped 3 traces" in r.getMessage() for r in caplog.records)


def test_batches_are_bounded_by_batch_size(store):
    recorder = TraceRecorder(store, tracing(batch_size=7))
    sizes = []
    real_insert = recorder._insert_rows
    recorder._insert_rows = lambda rows: (sizes.append(len(rows)), real_insert(rows))
    for i in range(20):
        recorder.submit(make_trace(i))
    recorder.start()
    recorder.close()
    assert sizes == [7, 7, 6] and count_rows(store) == 20


def test_a_database_error_is_counted_and_the_writer_survives(store, caplog):
    recorder = TraceRecorder(store, tracing()).start()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE traces RENAME TO traces_away")
    with caplog.at_level(logging.ERROR, logger="keel.ops.traces"):
        for i in range(3):
            recorder.submit(make_trace(i))
        assert recorder.flush(10)
    assert recorder.stats()["errors"] == 3
    assert any("failed" in r.getMessage() for r in caplog.records)

    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE traces_away RENAME TO traces")
    ok = make_trace(99)
    recorder.submit(ok)
    assert recorder.flush(10)
    recorder.close()
    assert get_trace(store, ok.id)["request"]["messages"][0]["content"] == "hello 99"
    assert recorder.stats() == {"written": 1, "dropped": 0, "pending": 0, "errors": 3}


def test_one_bad_row_does_not_sink_its_batch(store):
    recorder = TraceRecorder(store, tracing())
    first = make_trace(1)
    recorder.submit(first)
    recorder.start()
    assert recorder.flush(10)

    circular: dict = {}
    circular["self"] = circular
    unserialisable = make_trace(2)
    unserialisable.request = circular
    batch = [make_trace(3), first, unserialisable, make_trace(4)]  # `first` again: duplicate id
    for trace in batch:
        recorder.submit(trace)
    assert recorder.flush(10)
    recorder.close()
    assert recorder.stats() == {"written": 3, "dropped": 0, "pending": 0, "errors": 2}
    assert count_rows(store) == 3


def test_a_broken_trace_is_counted_not_raised(store):
    recorder = TraceRecorder(store, tracing()).start()
    recorder.submit(object())  # not a Trace at all: fails in the writer, not in submit
    recorder.submit(make_trace())
    recorder.close()
    assert recorder.stats() == {"written": 1, "dropped": 0, "pending": 0, "errors": 1}


def test_long_names_are_clipped_to_the_column(store):
    recorder = TraceRecorder(store, tracing()).start()
    trace = make_trace(model="m" * 5000)
    recorder.submit(trace)
    recorder.close()
    assert get_trace(store, trace.id)["model"] == "m" * 200


def test_throughput(store, request):
    """Prints the writer's rate; not asserted (no timed tests), only that all arrive."""
    n = 20_000
    recorder = TraceRecorder(store, tracing(buffer_size=n, batch_size=500, flush_interval_s=0.25))
    writer_cpu = []  # the writer thread's own CPU time: what it takes from the request path's GIL
    real_write = recorder._write_batch

    def timed_write(batch):
        t = time.thread_time()
        real_write(batch)
        writer_cpu.append(time.thread_time() - t)

    recorder._write_batch = timed_write
    pending = [make_trace(i) for i in range(n)]
    recorder.start()
    t0 = time.perf_counter()
    for trace in pending:
        recorder.submit(trace)
    submit_s = time.perf_counter() - t0
    assert recorder.flush(120)
    total_s = time.perf_counter() - t0
    recorder.close()
    assert recorder.stats() == {"written": n, "dropped": 0, "pending": 0, "errors": 0}
    backend = request.node.callspec.id
    print(f"\n[{backend}] trace writer: {n / total_s:,.0f} traces/s "
          f"({n} in {total_s:.2f} s); writer CPU {sum(writer_cpu) / n * 1e6:.1f} µs/trace; "
          f"submit {submit_s / n * 1e6:.2f} µs each")


def test_submit_after_close_is_dropped_and_counted(store):
    recorder = TraceRecorder(store, tracing()).start()
    recorder.close()
    recorder.submit(make_trace())
    assert recorder.stats() == {"written": 0, "dropped": 1, "pending": 0, "errors": 0}


def _lock_sqlite(store):
    """Another connection holding the SQLite file's write lock (the store is 'away')."""
    import sqlite3

    from keel.store.db import sqlite_path

    lock = sqlite3.connect(sqlite_path(store.engine.url), isolation_level=None,
                           check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    return lock


def test_an_outage_keeps_the_batch_and_writes_it_when_the_store_is_back(tmp_path, caplog):
    from keel.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'keel.db'}")
    recorder = TraceRecorder(store, tracing()).start()
    lock = _lock_sqlite(store)
    with caplog.at_level(logging.INFO, logger="keel.ops.traces"):
        for i in range(5):
            recorder.submit(make_trace(i))
        deadline = time.monotonic() + 30
        while recorder.status()["store_reachable"]:
            assert time.monotonic() < deadline, recorder.status()
            time.sleep(0.05)
        status = recorder.status()
        assert status["pending"] == 5 and "locked" in status["last_error"], status
        lock.execute("COMMIT")
        assert recorder.flush(30)
    recorder.close()
    assert count_rows(store) == 5 and recorder.stats()["errors"] == 0
    assert recorder.status()["store_reachable"] is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "unreachable" in warnings[0] and "again" in warnings[1]
    # The writer's short lock wait did not stay on the pool's connection for others.
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    store.close()


def test_close_during_an_outage_counts_what_it_cannot_write_and_returns(tmp_path, caplog):
    from keel.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'keel.db'}")
    recorder = TraceRecorder(store, tracing()).start()
    lock = _lock_sqlite(store)
    for i in range(3):
        recorder.submit(make_trace(i))
    with caplog.at_level(logging.ERROR, logger="keel.ops.traces"):
        recorder.close(timeout=30)  # does not wait for the store for ever
    lock.execute("COMMIT")
    assert recorder.stats() == {"written": 0, "dropped": 0, "pending": 0, "errors": 3}
    assert any("they are lost" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_nul_in_a_client_model_name_does_not_lose_the_trace(store):
    # PostgreSQL's text cannot hold NUL: the row keeps the name with U+FFFD instead.
    recorder = TraceRecorder(store, tracing())
    trace = make_trace(0)
    trace.model = "gpt\u0000x"
    recorder.submit(trace)
    recorder.close()
    assert recorder.stats()["written"] == 1 and recorder.stats()["errors"] == 0
    assert get_trace(store, trace.id)["model"] == "gpt\ufffdx"
