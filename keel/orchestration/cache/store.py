"""Cache entries in the store, and the in-memory vector index of each namespace.

The database is the truth: every process (`keel serve` replicas on one SQLite file or one
PostgreSQL) reads and writes the same `cache_entries` table. Exact lookups are one indexed
query. Semantic lookups search an in-memory `ExactIndex` per (namespace, embedder); an index
picks up entries other processes wrote by polling the store for recent rows of its namespace at
most every `refresh_interval_s` (so another replica's answer is found within that delay), and
candidates it proposes are read back from the store by id, so an entry deleted or expired
elsewhere is never served — it is dropped from the index instead.

Lookups are synchronous; the layer runs them in a worker thread. Writes (new entries, hit
counts) go to one writer thread of the store's own (`submit`, `submit_hit`), which writes what
has queued up in one transaction: an answer never waits for the database, and concurrent misses
do not queue up for SQLite's write lock one transaction each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from keel.store.models import cache_entries as t
from keel.store.vectors import ExactIndex

# Rows written up to this long before the newest one an index has seen are read again at each
# refresh: a replica whose clock runs a little behind, or whose transaction committed late, is
# still picked up (ids already loaded are skipped).
LOOKBACK_S = 10.0
EXPIRED_SWEEP_S = 60.0  # how often one process deletes expired rows
WRITE_BATCH = 256  # writes per transaction, at most

log = logging.getLogger("keel.cache")


@dataclass(slots=True)
class Entry:
    id: int
    model: str
    namespace: str
    kind: str
    query: str | None
    response: dict
    usage: dict | None
    created_at: float
    hits: int


class _Namespace:
    """One namespace's vectors in a growable matrix (ids kept ascending), searched in place:
    adding an entry to a 100k-entry namespace appends a row instead of copying the matrix."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.matrix: np.ndarray | None = None
        self.size = 0
        self.known: set[int] = set()
        self.newest = 0.0  # created_at of the newest row loaded
        self.polled = 0.0  # monotonic time of the last refresh

    def add(self, rows) -> None:
        fresh = []
        for entry_id, blob, created_at in rows:
            self.newest = max(self.newest, created_at)
            if entry_id not in self.known and blob is not None:
                self.known.add(entry_id)
                fresh.append((entry_id, np.frombuffer(blob, dtype="<f4")))
        if not fresh:
            return
        dim = len(fresh[0][1])
        if self.matrix is None or self.matrix.shape[1] != dim:
            self.ids, self.matrix, self.size = np.zeros(0, np.int64), np.zeros((0, dim),
                                                                                np.float32), 0
        need = self.size + len(fresh)
        if need > len(self.ids):
            capacity = max(need, 2 * len(self.ids), 64)
            ids = np.zeros(capacity, dtype=np.int64)
            matrix = np.zeros((capacity, dim), dtype=np.float32)
            ids[: self.size] = self.ids[: self.size]
            matrix[: self.size] = self.matrix[: self.size]
            self.ids, self.matrix = ids, matrix
        for entry_id, vector in fresh:
            self.ids[self.size] = entry_id
            self.matrix[self.size] = vector
            self.size += 1
        n = self.size
        if n > 1 and not np.all(self.ids[1:n] > self.ids[: n - 1]):  # a replica's late row
            order = np.argsort(self.ids[:n], kind="stable")
            self.ids[:n], self.matrix[:n] = self.ids[:n][order], self.matrix[:n][order]

    def drop(self, entry_id: int) -> None:
        if entry_id not in self.known:
            return
        self.known.discard(entry_id)
        n = self.size
        (rows,) = np.nonzero(self.ids[:n] == entry_id)
        if len(rows):
            i = int(rows[0])
            self.ids[i : n - 1] = self.ids[i + 1 : n].copy()
            self.matrix[i : n - 1] = self.matrix[i + 1 : n].copy()
            self.size -= 1

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float, np.ndarray]]:
        if not self.size:
            return []
        index = ExactIndex(self.ids[: self.size], self.matrix[: self.size])  # views, no copy
        return [(entry_id, score, index.matrix[index.rows([entry_id])[0]].copy())
                for entry_id, score in index.search(query, k)]


class CacheStore:
    def __init__(self, store, refresh_interval_s: float = 1.0) -> None:
        self.store = store  # keel.store.Store
        self.refresh_interval_s = refresh_interval_s
        self._namespaces: dict[tuple[str, str], _Namespace] = {}
        self._lock = threading.Lock()
        self._swept = 0.0
        # Every live exact key (model, key hash) -> expires_at, so a miss costs no query; read
        # from the store at most every `refresh_interval_s`, like the semantic indexes.
        self._keys: dict[tuple[str, str], float] = {}
        self._keys_newest = 0.0
        self._keys_polled: float | None = None
        self._queue: deque = deque()  # (kind, arguments, future) waiting for the writer
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closing = False

    @property
    def engine(self):
        return self.store.engine

    # -- lookups --------------------------------------------------------------------------------

    def exact(self, model: str, key_hash: str, now: float | None = None) -> Entry | None:
        now = time.time() if now is None else now
        query = (sa.select(*_ENTRY_COLUMNS)
                 .where(t.c.model == model, t.c.key_hash == key_hash, t.c.expires_at > now)
                 .order_by(t.c.created_at.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _entry(row)

    def knows(self, model: str, key_hash: str) -> bool | None:
        """Whether a live entry may exist for this exact key, from memory: True (look it up),
        False (a miss, no query needed), None (the key list is due a refresh: `refresh_keys`)."""
        polled = self._keys_polled
        if polled is None or time.monotonic() - polled >= self.refresh_interval_s:
            return None
        expires = self._keys.get((model, key_hash))
        return expires is not None and expires > time.time()

    def refresh_keys(self) -> None:
        """Read the exact keys written since the last look (all of them the first time)."""
        since = self._keys_newest - LOOKBACK_S if self._keys_newest else None
        query = sa.select(t.c.model, t.c.key_hash, t.c.expires_at, t.c.created_at).where(
            t.c.expires_at > time.time())
        if since is not None:
            query = query.where(t.c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        with self._lock:
            for model, key_hash, expires_at, created_at in rows:
                self._keys[(model, key_hash)] = expires_at
                self._keys_newest = max(self._keys_newest, created_at)
            self._keys_polled = time.monotonic()

    def candidates(self, namespace: str, embedder: str, vector: np.ndarray,
                   k: int = 3) -> list[tuple[int, float, np.ndarray]]:
        """The k nearest entries of the namespace (id, cosine, vector), best first; the index is
        refreshed from the store first when `refresh_interval_s` has passed."""
        with self._lock:
            ns = self._namespaces.setdefault((namespace, embedder), _Namespace())
            if time.monotonic() - ns.polled >= self.refresh_interval_s:
                self._refresh(ns, namespace, embedder)
            return ns.search(vector, k)

    def get(self, entry_id: int, now: float | None = None) -> Entry | None:
        """A live (unexpired) entry by id; None when it was deleted or has expired."""
        now = time.time() if now is None else now
        query = sa.select(*_ENTRY_COLUMNS).where(t.c.id == entry_id, t.c.expires_at > now)
        with self.engine.connect() as conn:
            return _entry(conn.execute(query).first())

    def forget(self, namespace: str, embedder: str, entry_id: int) -> None:
        with self._lock:
            ns = self._namespaces.get((namespace, embedder))
            if ns is not None:
                ns.drop(entry_id)

    def _refresh(self, ns: _Namespace, namespace: str, embedder: str) -> None:
        since = ns.newest - LOOKBACK_S if ns.newest else None
        query = sa.select(t.c.id, t.c.embedding, t.c.created_at).where(
            t.c.namespace == namespace, t.c.embedder == embedder, t.c.expires_at > time.time())
        if since is not None:
            query = query.where(t.c.created_at >= since)
        with self.engine.connect() as conn:
            ns.add(conn.execute(query).all())
        ns.polled = time.monotonic()

    # -- the writer thread ----------------------------------------------------------------------

    def submit(self, **arguments) -> Future:
        """Queue `insert(**arguments)` for the writer thread; the future gets the entry's id."""
        return self._enqueue("insert", arguments)

    def submit_hit(self, entry_id: int) -> Future:
        return self._enqueue("hit", {"entry_id": entry_id, "now": time.time()})

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout)
            self._writer = None
        self._write_queued()

    def _enqueue(self, kind: str, arguments: dict) -> Future:
        future: Future = Future()
        if self._closing:
            future.set_exception(RuntimeError("the cache store is closed"))
            return future
        self._queue.append((kind, arguments, future))
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name="keel-cache-writer",
                                            daemon=True)
            self._writer.start()
        self._wake.set()
        return future

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(1.0)
            self._wake.clear()
            self._write_queued()

    def _write_queued(self) -> None:
        while self._queue:
            batch = []
            while self._queue and len(batch) < WRITE_BATCH:
                batch.append(self._queue.popleft())
            try:
                results = self._write_batch(batch)
            except Exception as exc:  # the store away: these writes are lost, and said so
                log.error("writing %d cache change(s) failed: %s", len(batch), exc)
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), result in zip(batch, results):
                future.set_result(result)

    def _write_batch(self, batch: list) -> list:
        """One transaction for what queued up: hit counts, then the new entries with one
        executemany each for the deletes of replaced keys and for the inserts (ids returned in
        order), so a busy cache pays SQLAlchemy's per-statement work once per batch."""
        results: list = [None] * len(batch)
        # Two answers to one exact key in one batch: the later replaces the earlier, as it
        # would have a transaction later.
        last = {}
        for i, (kind, arguments, _) in enumerate(batch):
            if kind == "insert":
                last[(arguments["model"], arguments["key_hash"])] = i
        inserts = [(i, batch[i][1]) for i in sorted(last.values())]
        rows = [_row_values(**arguments) for _, arguments in inserts]
        models = {a["model"]: a["max_entries"] for _, a in inserts
                  if a.get("max_entries") is not None}
        with self.engine.begin() as conn:
            for kind, arguments, _ in batch:
                if kind == "hit":
                    conn.execute(t.update().where(t.c.id == arguments["entry_id"])
                                 .values(hits=t.c.hits + 1, last_hit_at=arguments["now"]))
            if rows:
                # The same exact key again (`x-keel-cache: refresh`, or two replicas missing at
                # once): the new answer replaces the old, for semantic lookups too.
                conn.execute(t.delete().where(t.c.model == sa.bindparam("m"),
                                              t.c.key_hash == sa.bindparam("k")),
                             [{"m": r["model"], "k": r["key_hash"]} for r in rows])
                ids = conn.execute(t.insert().returning(t.c.id, sort_by_parameter_order=True),
                                   rows).scalars().all()
                for (i, _), entry_id in zip(inserts, ids):
                    results[i] = int(entry_id)
        for (i, _), values in zip(inserts, rows):
            self._index_new(results[i], values)
        for i, (kind, arguments, _) in enumerate(batch):  # the replaced ones: the later id
            if kind == "insert" and results[i] is None:
                results[i] = results[last[(arguments["model"], arguments["key_hash"])]]
        for model, max_entries in models.items():
            self.evict(model, max_entries)
        self._maybe_sweep(time.time())
        return results

    # -- writes ---------------------------------------------------------------------------------

    def record_hit(self, entry_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == entry_id)
                         .values(hits=t.c.hits + 1, last_hit_at=now))

    def insert(self, *, model: str, namespace: str, key_hash: str, query: str | None,
               embedder: str | None, vector: np.ndarray | None, response: dict,
               usage: dict | None, ttl_s: float, max_entries: int | None,
               now: float | None = None) -> int:
        """Store an answer now, on this thread (replacing one with the same key); then keep the
        model within `max_entries` (least recently used go first) and, at most once a minute,
        delete expired rows. The layer goes through `submit` instead."""
        arguments = dict(model=model, namespace=namespace, key_hash=key_hash, query=query,
                         embedder=embedder, vector=vector, response=response, usage=usage,
                         ttl_s=ttl_s, max_entries=max_entries, now=now)
        with self.engine.begin() as conn:
            entry_id, values = self._insert_row(conn, **arguments)
        self._index_new(entry_id, values)
        if max_entries is not None:
            self.evict(model, max_entries)
        self._maybe_sweep(values["created_at"])
        return entry_id

    def _insert_row(self, conn, **arguments) -> tuple[int, dict]:
        values = _row_values(**arguments)
        # The same exact key again (`x-keel-cache: refresh`, or two replicas missing at once):
        # the new answer replaces the old, for semantic lookups too.
        conn.execute(t.delete().where(t.c.model == values["model"],
                                      t.c.key_hash == values["key_hash"]))
        entry_id = conn.execute(t.insert().values(**values)).inserted_primary_key[0]
        return int(entry_id), values

    def _index_new(self, entry_id: int, values: dict) -> None:
        with self._lock:
            self._keys[(values["model"], values["key_hash"])] = values["expires_at"]
        if values["embedding"] is None:
            return
        with self._lock:
            ns = self._namespaces.get((values["namespace"], values["embedder"]))
            if ns is not None:  # seen by this process's lookups at once, not after a poll
                ns.add([(entry_id, values["embedding"], values["created_at"])])

    def _maybe_sweep(self, now: float) -> None:
        if now - self._swept >= EXPIRED_SWEEP_S:
            self._swept = now
            self.delete_expired(now)

    def evict(self, model: str, max_entries: int) -> int:
        with self.engine.begin() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(t)
                                 .where(t.c.model == model)).scalar_one()
            excess = count - max_entries
            if excess <= 0:
                return 0
            oldest = (sa.select(t.c.id).where(t.c.model == model)
                      .order_by(sa.func.coalesce(t.c.last_hit_at, t.c.created_at).asc(),
                                t.c.id.asc())
                      .limit(excess))
            return conn.execute(t.delete().where(t.c.id.in_(oldest.scalar_subquery()))).rowcount

    def delete_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            return conn.execute(t.delete().where(t.c.expires_at <= now)).rowcount

    def clear(self, model: str | None = None, namespace: str | None = None) -> int:
        query = t.delete()
        if model is not None:
            query = query.where(t.c.model == model)
        if namespace is not None:
            query = query.where(t.c.namespace == namespace)
        with self.engine.begin() as conn:
            deleted = conn.execute(query).rowcount
        with self._lock:
            self._namespaces.clear()
            self._keys.clear()
            self._keys_newest, self._keys_polled = 0.0, None
        return deleted


def clear(store, model: str | None = None, namespace: str | None = None) -> int:
    """Delete entries (all, a model's, a namespace's); other processes stop serving them at
    once, since every candidate is read back from the store before it is served."""
    return CacheStore(store).clear(model, namespace)


def stats(store, now: float | None = None) -> list[dict[str, Any]]:
    """Per model: entries (live and expired), semantic entries, namespaces, hits, newest."""
    now = time.time() if now is None else now
    live = sa.case((t.c.expires_at > now, 1), else_=0)
    semantic = sa.case((t.c.kind == "semantic", 1), else_=0)
    query = (sa.select(t.c.model, sa.func.count().label("entries"),
                       sa.func.sum(live).label("live"), sa.func.sum(semantic).label("semantic"),
                       sa.func.count(sa.distinct(t.c.namespace)).label("namespaces"),
                       sa.func.sum(t.c.hits).label("hits"),
                       sa.func.max(t.c.created_at).label("newest"))
             .group_by(t.c.model).order_by(t.c.model))
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{"model": r["model"], "entries": int(r["entries"]), "live": int(r["live"] or 0),
             "expired": int(r["entries"]) - int(r["live"] or 0),
             "semantic": int(r["semantic"] or 0), "namespaces": int(r["namespaces"]),
             "hits": int(r["hits"] or 0), "newest": r["newest"]} for r in rows]


def namespaces(store, model: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The largest namespaces (for `keel cache stats --namespaces`, and to find one to clear)."""
    query = (sa.select(t.c.model, t.c.namespace, sa.func.count().label("entries"),
                       sa.func.sum(t.c.hits).label("hits"))
             .group_by(t.c.model, t.c.namespace)
             .order_by(sa.desc("entries"), t.c.namespace).limit(limit))
    if model is not None:
        query = query.where(t.c.model == model)
    with store.engine.connect() as conn:
        return [{"model": r["model"], "namespace": r["namespace"], "entries": int(r["entries"]),
                 "hits": int(r["hits"] or 0)} for r in conn.execute(query).mappings()]


_ENTRY_COLUMNS = (t.c.id, t.c.model, t.c.namespace, t.c.kind, t.c.query, t.c.response,
                  t.c.usage, t.c.created_at, t.c.hits)


def _row_values(*, model, namespace, key_hash, query, embedder, vector, response, usage, ttl_s,
                max_entries=None, now=None) -> dict:
    """The `cache_entries` row for an answer."""
    now = time.time() if now is None else now
    blob = None if vector is None else np.asarray(vector, dtype="<f4").tobytes()
    return {
        "model": model, "namespace": namespace,
        "kind": "exact" if blob is None else "semantic", "key_hash": key_hash,
        "query": query, "embedder": embedder if blob is not None else None,
        "embedding": blob, "response": response, "usage": usage, "created_at": now,
        "last_hit_at": None, "hits": 0, "expires_at": now + ttl_s,
    }


def _entry(row) -> Entry | None:
    if row is None:
        return None
    return Entry(id=int(row.id), model=row.model, namespace=row.namespace, kind=row.kind,
                 query=row.query, response=row.response, usage=row.usage,
                 created_at=row.created_at, hits=row.hits)
