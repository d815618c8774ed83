"""The trace recorder: request traces go to the store in batches, on a thread of their own.

The request path only calls `submit(trace)`: the trace becomes the driver's parameters for its
row (a few microseconds, orjson) and is appended to a bounded deque; no lock, no I/O. A writer
thread wakes every `flush_interval_s` (or as soon as a full batch is waiting) and inserts up to
`batch_size` rows with one executemany. Serialising on the event loop, spread evenly over the
requests, rather than in the writer in bursts of a whole batch, is what keeps the tail short:
while the writer runs Python it holds the GIL, and every socket call of the event loop then waits
for it (see docs/benchmarks.md, "The tail").

Nothing is lost silently. A full buffer drops the new trace and counts it (`dropped`, and a
warning at most every `DROP_WARNING_EVERY_S`); a failed insert is logged and its traces counted
(`errors`), and the writer carries on; `close()` writes everything still pending.

When the store is away (a SQLite file locked by another process, PostgreSQL restarting), the
writer keeps its batch and retries with backoff (`RETRY_FIRST_S` doubling to `RETRY_MAX_S`)
until the store answers; meanwhile new traces wait in the bounded buffer, and those beyond it
are dropped and counted. One warning when the outage starts, one line when it ends; `status()`
says whether the store is reachable, the last write error, and the counters (for /readyz).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.ops.privacy import redact_error, redact_model, redact_span
from keel.ops.usage import UsageRollup
from keel.store.db import dumps_json
from keel.store.models import traces as traces_table

if TYPE_CHECKING:
    from keel.config import TracingConfig
    from keel.pipeline.trace import Trace
    from keel.store import Store

log = logging.getLogger(__name__)

DROP_WARNING_EVERY_S = 10.0
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0
# The writer's own wait for a SQLite lock: past it, the retry loop takes over, which logs,
# shows in /readyz and lets close() give up, where busy_timeout would wait mutely (db.py).
WRITER_SQLITE_BUSY_TIMEOUT_MS = 1000


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
        self._pending: deque = deque()  # driver parameters, one row each
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._insert = _DriverInsert(store.engine.dialect)
        # Spend and tokens per day, key and model, written in each batch's own transaction.
        self._usage = UsageRollup(store.engine.dialect, self._insert.keys, self._insert.positional)
        self._engine = store.engine.execution_options(
            sqlite_busy_timeout_ms=WRITER_SQLITE_BUSY_TIMEOUT_MS)
        self._stop = threading.Event()  # interrupts a retry's backoff on close()
        self._writer_ident: int | None = None
        self._held = 0  # traces in the batch being written (or retried), out of the deque
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.store_reachable = True
        self.last_error: str | None = None
        self._outage_since: float | None = None
        self._dropped_reported = 0
        self._last_drop_warning = 0.0

    # -- the request path ------------------------------------------------------------------

    def submit(self, trace: Trace) -> None:
        """Queue a finished trace for writing. Never blocks and never raises."""
        pending = self._pending
        if len(pending) >= self.buffer_size or self._closed:
            self.dropped += 1
            return
        try:
            row = self._insert.param(trace_row(trace, self.record_bodies))
        except Exception:  # a value JSON cannot hold: this trace only, counted
            log.exception("trace %s could not be turned into a row; skipped",
                          getattr(trace, "id", "?"))
            self.errors += 1
            return
        pending.append(row)
        if len(pending) == self.batch_size:  # a full batch is waiting: don't sit out the timer
            self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TraceRecorder:
        if self._thread is None:
            self._stopping = self._closed = False
            self._stop.clear()
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
            self._stop.set()
            self._wake.set()
            thread.join(timeout)
        self._write_pending()  # whatever came in after the thread's last look, or with no thread
        self._report_drops(force=True)

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "pending": len(self._pending) + self._held,
            "errors": self.errors,
        }

    def status(self) -> dict[str, Any]:
        """The counters, and the store as the writer last found it (for /readyz)."""
        return {
            **self.stats(),
            "buffer_size": self.buffer_size,
            "store_reachable": self.store_reachable,
            "last_error": self.last_error,
        }

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        self._writer_ident = threading.get_ident()
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

    def _take_batch(self) -> list:
        pending, batch = self._pending, []
        try:
            while len(batch) < self.batch_size:
                batch.append(pending.popleft())
        except IndexError:  # drained (close() may drain beside a writer that outlived its join)
            pass
        return batch

    def _write_batch(self, rows: list) -> None:
        if not rows:
            return
        self._held = len(rows)
        try:
            self._write_rows(rows)
        finally:
            self._held = 0

    def _write_rows(self, rows: list) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                self._insert_rows(rows)
            except Exception as exc:
                if len(rows) > 1 and _is_row_problem(exc):
                    # One bad row (a duplicate id, say) must not take its whole batch with it.
                    for row in rows:
                        self._write_batch_of_one(row)
                elif _is_outage(exc) and self._may_wait():
                    # The store is away: keep the batch, wait, try again. New traces queue in
                    # the bounded buffer meanwhile (and are dropped, counted, beyond it).
                    self._store_down(exc, len(rows))
                    self._report_drops()
                    self._stop.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                else:
                    self._count_failure(rows, exc)
            else:
                self._store_up()
            return

    def _write_batch_of_one(self, row) -> None:
        self._write_rows([row])

    def _insert_rows(self, rows: list) -> None:
        with self._engine.begin() as conn:
            conn.exec_driver_sql(self._insert.sql, rows)
            self._usage.write(conn, rows)
        self.written += len(rows)

    def _count_failure(self, rows: list, exc: BaseException) -> None:
        self.errors += len(rows)
        self.last_error = _describe(exc)
        log.error("writing %d trace(s) failed, they are lost: %s", len(rows), self.last_error)

    def _may_wait(self) -> bool:
        # Only the writer thread waits for the store, and not once close() has begun: flush()
        # or close() writing on the caller's thread count what fails instead of hanging.
        return threading.get_ident() == self._writer_ident and not self._stopping

    def _store_down(self, exc: BaseException, held: int) -> None:
        self.last_error = _describe(exc)
        if self._outage_since is None:  # once per outage, not once per retry
            self._outage_since = time.monotonic()
            self.store_reachable = False
            log.warning("trace store unreachable (%s): keeping %d trace(s) and retrying; new "
                        "traces wait in the buffer (buffer_size=%d)", self.last_error, held,
                        self.buffer_size)

    def _store_up(self) -> None:
        if self._outage_since is not None:
            log.warning("trace store reachable again after %.1f s; the waiting traces are "
                        "being written (%d dropped in all)",
                        time.monotonic() - self._outage_since, self.dropped)
            self._outage_since = None
        self.store_reachable = True

    def _report_drops(self, force: bool = False) -> None:
        new = self.dropped - self._dropped_reported
        now = time.monotonic()
        if new and (force or now - self._last_drop_warning >= DROP_WARNING_EVERY_S):
            log.warning("trace buffer full (buffer_size=%d): dropped %d traces (%d in all)",
                        self.buffer_size, new, self.dropped)
            self._dropped_reported += new
            self._last_drop_warning = now


class _DriverInsert:
    """The traces INSERT as the driver's own SQL, with rows as the driver's own parameters.

    SQLAlchemy's executemany runs a few microseconds of Python per row and column (bind
    processors, JSON through its serializer); the writer thread holds the GIL through all of it,
    and the event loop waits for the GIL (up to `sys.getswitchinterval()` at a time), which
    showed as Keel's p99 under load. Here JSON columns are serialised with orjson (the store's
    own `dumps_json`) when the trace is submitted, rows become tuples, and the driver's
    executemany, in C for SQLite, releases the GIL while SQLite works on each row.
    """

    def __init__(self, dialect: sa.engine.Dialect) -> None:
        compiled = traces_table.insert().compile(dialect=dialect)
        self.sql = str(compiled)  # PostgreSQL's carries the `::JSON` casts of the JSON columns
        self.keys = list(compiled.positiontup or traces_table.c.keys())
        self.positional = bool(compiled.positional)
        self.json_keys = frozenset(c.name for c in traces_table.c if isinstance(c.type, sa.JSON))

    def param(self, row: dict):
        """The driver's parameters for one row; raises TypeError for a value JSON cannot hold."""
        json_keys = self.json_keys
        # JSON None stays SQL NULL (the column's none_as_null), not the text 'null'.
        values = [dumps_json(row[k]) if k in json_keys and row[k] is not None else row[k]
                  for k in self.keys]
        return tuple(values) if self.positional else dict(zip(self.keys, values))


def trace_row(trace: Trace, record_bodies: bool = True) -> dict[str, Any]:
    """The `traces` row for one trace, as Python values (JSON columns not yet serialised)."""
    return {
        "id": trace.id,
        "created_at": trace.started_at,
        "endpoint": _clip(trace.endpoint, 64) or "",
        "model": _clip(trace.model if record_bodies or trace.provider is not None
                       else redact_model(trace.model)),
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
        # With bodies off, no user or model text may reach the store: what layers put on spans
        # and error messages (which can quote the request) are reduced here (keel.ops.privacy).
        "error": trace.error if record_bodies else redact_error(trace.error),
        "spans": [span.to_dict() if record_bodies else redact_span(span.to_dict())
                  for span in trace.spans],
        "key_id": trace.key_id,
        "key_metadata": trace.key_metadata,
        # The end user's id is the client's own label, not content: kept with bodies off too.
        "end_user": _clip(trace.user),
        "session_id": _clip(trace.session_id),
        "cost_usd": trace.cost_usd,
    }


def _is_outage(exc: Exception) -> bool:
    """The database could not be reached or was busy: worth waiting for, unlike a bad row or a
    missing table, which no retry will cure."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        # SQLite reports a schema mistake as an OperationalError too.
        text = str(exc.orig or exc).lower()
        return not any(s in text for s in ("no such table", "no such column", "has no column"))
    return False


def _describe(exc: BaseException) -> str:
    # The driver's own first line only: SQLAlchemy's full text lists the SQL parameters, which
    # are trace rows (and so, with bodies on, user content).
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {first}"[:300]


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
    # reject the whole batch over one long one — or over a NUL, which its text cannot hold.
    if value is None:
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value if len(value) <= limit else value[:limit]
