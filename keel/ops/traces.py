"""The trace recorder: request traces go to the store in batches, on a thread of their own.

The request path only calls `submit(trace)`: an O(1) append to a bounded deque, no lock, no I/O,
no serialisation. A writer thread wakes every `flush_interval_s` (or as soon as a full batch is
waiting), turns traces into rows, and inserts up to `batch_size` of them with one executemany.

Nothing is lost silently. A full buffer drops the new trace and counts it (`dropped`, and a
warning at most every `DROP_WARNING_EVERY_S`); a failed insert is logged and its traces counted
(`errors`), and the writer carries on; `close()` writes everything still pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.store.models import traces as traces_table

if TYPE_CHECKING:
    from keel.config import TracingConfig
    from keel.pipeline.trace import Trace
    from keel.store import Store

log = logging.getLogger(__name__)

DROP_WARNING_EVERY_S = 10.0


class TraceRecorder:
    """Buffers finished traces and writes them to the store from one background thread.

    `submit` is meant for the event loop's thread; `start`, `flush` and `close` for start-up,
    tests and shutdown. `stats()` gives the counters: written, dropped, pending, errors.
    """

    def __init__(self, store: Store, config: TracingConfig) -> None:
        self.store = store
        self.record_bodies = config.record_bodies
        self.buffer_size = config.buffer_size
        self.batch_size = config.batch_size
        self.flush_interval_s = config.flush_interval_s
        self._pending: deque[Trace] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._insert = traces_table.insert()
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._dropped_reported = 0
        self._last_drop_warning = 0.0

    # -- the request path ------------------------------------------------------------------

    def submit(self, trace: Trace) -> None:
        """Queue a finished trace for writing. Never blocks and never raises."""
        pending = self._pending
        if len(pending) >= self.buffer_size or self._closed:
            self.dropped += 1
            return
        pending.append(trace)
        if len(pending) == self.batch_size:  # a full batch is waiting: don't sit out the timer
            self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TraceRecorder:
        if self._thread is None:
            self._stopping = self._closed = False
            self._thread = threading.Thread(target=self._run, name="keel-trace-writer", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or failed). True if it was."""
        if self._thread is None or not self._thread.is_alive():
            self._write_pending()
            return not self._pending
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending or self._busy:
                self._wake.set()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer after it has written everything pending; later submits are dropped."""
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
        self._write_pending()  # whatever came in after the thread's last look, or with no thread
        self._report_drops(force=True)

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "pending": len(self._pending),
            "errors": self.errors,
        }

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self._write_pending()
            self._report_drops()
        self._write_pending()

    def _write_pending(self) -> None:
        while self._pending:
            with self._idle:
                self._busy = True
            try:
                self._write_batch(self._take_batch())
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
        with self._idle:
            self._idle.notify_all()

    def _take_batch(self) -> list[Trace]:
        pending, batch = self._pending, []
        try:
            while len(batch) < self.batch_size:
                batch.append(pending.popleft())
        except IndexError:  # drained (close() may drain beside a writer that outlived its join)
            pass
        return batch

    def _write_batch(self, batch: list[Trace]) -> None:
        rows = []
        for trace in batch:
            try:
                rows.append(trace_row(trace, self.record_bodies))
            except Exception:
                log.exception("trace %s could not be turned into a row; skipped",
                              getattr(trace, "id", "?"))
                self.errors += 1
        if not rows:
            return
        try:
            self._insert_rows(rows)
        except Exception as exc:
            if len(rows) > 1 and _is_row_problem(exc):
                # One bad row (a duplicate id, say) must not take its whole batch down with it.
                for row in rows:
                    self._write_batch_of_one(row)
            else:
                self._count_failure(rows, exc)

    def _write_batch_of_one(self, row: dict) -> None:
        try:
            self._insert_rows([row])
        except Exception as exc:
            self._count_failure([row], exc)

    def _insert_rows(self, rows: list[dict]) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(self._insert, rows)
        self.written += len(rows)

    def _count_failure(self, rows: list[dict], exc: BaseException) -> None:
        self.errors += len(rows)
        log.error("writing %d trace(s) failed, they are lost: %s: %s", len(rows),
                  type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    def _report_drops(self, force: bool = False) -> None:
        new = self.dropped - self._dropped_reported
        now = time.monotonic()
        if new and (force or now - self._last_drop_warning >= DROP_WARNING_EVERY_S):
            log.warning("trace buffer full (buffer_size=%d): dropped %d traces (%d in all)",
                        self.buffer_size, new, self.dropped)
            self._dropped_reported += new
            self._last_drop_warning = now


def trace_row(trace: Trace, record_bodies: bool = True) -> dict[str, Any]:
    """The `traces` row for one trace; JSON columns are serialised by the engine at insert."""
    return {
        "id": trace.id,
        "created_at": trace.started_at,
        "endpoint": _clip(trace.endpoint, 64) or "",
        "model": _clip(trace.model),
        "provider": _clip(trace.provider),
        "upstream_model": _clip(trace.upstream_model),
        "stream": bool(trace.stream),
        "status": trace.status,
        "latency_ms": trace.latency_ms,
        "ttft_ms": trace.ttft_ms,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "total_tokens": trace.total_tokens,
        "system_fingerprint": _clip(trace.system_fingerprint),
        "request": trace.request if record_bodies else None,
        "response": trace.response if record_bodies else None,
        "error": trace.error,
        "spans": [span.to_dict() for span in trace.spans],
    }


def _is_row_problem(exc: Exception) -> bool:
    """A fault in some row's data (worth retrying row by row), not in the database itself."""
    if isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError)):
        return True
    if isinstance(exc, (TypeError, ValueError)):  # a JSON value the driver could not serialise
        return True
    # A StatementError that is not a DBAPIError failed before reaching the database: a value
    # that could not be bound or serialised.
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)


def _clip(value: str | None, limit: int = 200) -> str | None:
    # The column holds 200 characters; a client may send any model name, and PostgreSQL would
    # reject the whole batch over one long one.
    if value is None or len(value) <= limit:
        return value
    return value[:limit]
