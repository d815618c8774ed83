"""Trace retention: delete traces past an age or beyond the newest N, without stalling anyone.

`prune(store, older_than_s=..., keep=...)` works out one boundary — a (created_at, id) point —
once, and the newest id there is, then deletes the traces older than the boundary (and no newer
than that id, so traces written meanwhile cannot keep one prune going for ever) in batches of `batch_size`, each batch one
`DELETE ... WHERE id IN (SELECT id ... ORDER BY created_at, id LIMIT n)` in a transaction of its
own. A batch holds SQLite's write lock (or PostgreSQL's row locks on old rows, which nobody else
touches) for milliseconds, so the trace writer and readers carry on between batches; a pause
between batches keeps SQLite's busy-waiting writer from being starved.

Only the `traces` table is touched. Feedback, evaluation datasets, runs and results reference
traces by id without a foreign key and stay; `usage_daily` (the rollup budgets and `keel usage`
read) is written beside the traces and survives them.

`Pruner` runs `prune` with the config's `tracing.retention_days` / `max_traces` on a daemon
thread every `prune_interval_s`. A failure (the store away) is logged and tried again at the next
interval; `close()` interrupts the wait and any prune in progress between two batches.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from keel.errors import InvalidRequest
from keel.store.models import traces

if TYPE_CHECKING:
    from keel.config import TracingConfig
    from keel.store import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0
# Between two batches: long enough for a writer waiting on SQLite's lock (its busy handler
# sleeps a few ms at a time) to get in, short enough that a million rows still go in seconds.
BATCH_PAUSE_S = 0.005
# The first background prune waits this long after start (or the interval, if shorter), so it
# never competes with start-up and a restart loop still prunes.
FIRST_RUN_AFTER_S = 5.0


def prune(
    store: Store,
    *,
    older_than_s: float | None = None,
    keep: int | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: float | None = None,
    pause_s: float = BATCH_PAUSE_S,
    stop: threading.Event | None = None,
) -> int:
    """Delete traces older than `older_than_s` seconds and/or beyond the newest `keep`.

    Returns how many were deleted (with `dry_run`, how many would be; nothing is deleted).
    With both limits a trace goes if either says so. `stop`, once set, ends the prune after the
    batch in progress.
    """
    if older_than_s is None and keep is None:
        raise InvalidRequest("prune: give an age (older_than_s) or a count (keep), or both")
    if older_than_s is not None and older_than_s <= 0:
        raise InvalidRequest(f"prune: the age must be positive, got {older_than_s!r}")
    if keep is not None and keep < 0:
        raise InvalidRequest(f"prune: keep must be 0 or more, got {keep!r}")
    if batch_size < 1:
        raise InvalidRequest(f"prune: batch_size must be at least 1, got {batch_size!r}")
    boundary = _boundary(store, older_than_s, keep, time.time() if now is None else now)
    if boundary is None:
        return 0
    with store.engine.connect() as conn:
        last_id = conn.execute(sa.select(sa.func.max(traces.c.id))).scalar()
    if last_id is None:
        return 0
    # Trace ids are time-ordered: those above `last_id` were created after the prune began.
    older = sa.and_(_older_than(*boundary), traces.c.id <= last_id)
    if dry_run:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(older)).scalar_one())
    oldest_first = (
        sa.select(traces.c.id).where(older)
        .order_by(traces.c.created_at, traces.c.id).limit(batch_size)
    )
    delete = sa.delete(traces).where(traces.c.id.in_(oldest_first.scalar_subquery()))
    # IMMEDIATE on SQLite: take the write lock up front (waiting on busy_timeout) rather than
    # upgrading a read mid-statement, which fails at once if the writer committed meanwhile.
    engine = store.engine.execution_options(sqlite_immediate=True)
    deleted = 0
    while True:
        with engine.begin() as conn:
            count = conn.execute(delete).rowcount
        deleted += count
        # Fewer than a batch: nothing older is left (or another replica pruned the rest).
        if count < batch_size or (stop is not None and stop.is_set()):
            return deleted
        if stop is not None:
            if stop.wait(pause_s):
                return deleted
        elif pause_s > 0:
            time.sleep(pause_s)


def _boundary(store: Store, older_than_s: float | None, keep: int | None,
              now: float) -> tuple[float, str] | None:
    """The (created_at, id) point below which traces go; None when nothing goes.

    Each limit is such a point; their union is everything below the later of the two. Fixing it
    before deleting means traces written during the prune (all newer) are never its business.
    """
    points: list[tuple[float, str]] = []
    if older_than_s is not None:
        points.append((now - older_than_s, ""))  # "" sorts below every id: created_at < cutoff
    if keep is not None:
        newest_first = sa.select(traces.c.created_at, traces.c.id).order_by(
            traces.c.created_at.desc(), traces.c.id.desc())
        with store.engine.connect() as conn:
            if keep == 0:
                row = conn.execute(newest_first.limit(1)).first()
                if row is not None:
                    # Past the newest: its id with a character appended sorts just above it.
                    points.append((row.created_at, row.id + "~"))
            else:
                row = conn.execute(newest_first.offset(keep - 1).limit(1)).first()
                if row is not None:
                    points.append((row.created_at, row.id))
    return max(points) if points else None


def _older_than(created_at: float, trace_id: str) -> sa.ColumnElement[bool]:
    # Spelled out rather than a row-value comparison, which SQLite and PostgreSQL index alike
    # through ix_traces_created_at.
    return sa.or_(
        traces.c.created_at < created_at,
        sa.and_(traces.c.created_at == created_at, traces.c.id < trace_id),
    )


class Pruner:
    """Prunes traces by the tracing config's retention on a thread of its own.

    `start()` returns self; `run_once()` prunes now (what the thread does each interval);
    `stats()` says when it last ran, what it deleted and the last error; `close()` stops it.
    """

    def __init__(self, store: Store, config: TracingConfig, *,
                 batch_size: int = 1000, first_run_after_s: float | None = None) -> None:
        self.store = store
        self.older_than_s = config.retention_days * DAY_S if config.retention_days else None
        self.keep = config.max_traces
        self.interval_s = config.prune_interval_s
        self.batch_size = batch_size
        self.first_run_after_s = (min(FIRST_RUN_AFTER_S, self.interval_s)
                                  if first_run_after_s is None else first_run_after_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.deleted_total = 0
        self.last_deleted: int | None = None
        self.last_run_at: float | None = None
        self.last_duration_s: float | None = None
        self.last_error: str | None = None

    def start(self) -> Pruner:
        if self._thread is None and (self.older_than_s is not None or self.keep is not None):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="keel-trace-pruner",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: at once when it is waiting, after the current batch when pruning."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "last_run_at": self.last_run_at,
            "last_deleted": self.last_deleted,
            "last_duration_s": self.last_duration_s,
            "deleted_total": self.deleted_total,
            "last_error": self.last_error,
        }

    def run_once(self, stop: threading.Event | None = None) -> int:
        """One prune by the configured retention; errors are logged and kept, never raised.
        `stop` set ends it between two batches (the thread passes the one close() sets)."""
        started = time.monotonic()
        self.last_run_at = time.time()
        try:
            deleted = prune(self.store, older_than_s=self.older_than_s, keep=self.keep,
                            batch_size=self.batch_size, stop=stop)
        except Exception as exc:  # the store away, or locked for long: try at the next interval
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.warning("trace prune failed (%s); retrying in %.0f s",
                        self.last_error, self.interval_s)
            deleted = 0
        else:
            self.last_error = None
            if deleted:
                log.info("pruned %d trace(s) (%s) in %.2f s", deleted, self._policy(),
                         time.monotonic() - started)
        self.runs += 1
        self.last_deleted = deleted
        self.deleted_total += deleted
        self.last_duration_s = time.monotonic() - started
        return deleted

    def _run(self) -> None:
        wait = self.first_run_after_s
        while not self._stop.wait(wait):
            self.run_once(self._stop)
            wait = self.interval_s

    def _policy(self) -> str:
        parts = []
        if self.older_than_s is not None:
            parts.append(f"older than {self.older_than_s / DAY_S:g} days")
        if self.keep is not None:
            parts.append(f"beyond the newest {self.keep}")
        return " or ".join(parts)
