"""Cache entries in the store, on SQLite and PostgreSQL: lookups, TTL, eviction, clearing, and
two stores (two processes) on one database seeing each other's entries."""

from __future__ import annotations

import time

import numpy as np
import pytest

from keel.orchestration.cache import store as cache_store
from keel.orchestration.cache.store import CacheStore
from tests.store.backends import db_url, store  # noqa: F401  (fixtures, one per backend)


def unit(*values) -> np.ndarray:
    v = np.zeros(8, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def response(text: str) -> dict:
    return {"object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
         "logprobs": None, "finish_reason": "stop"}]}


def put(cache: CacheStore, text: str, *, model="m", namespace="ns", key=None, vector=None,
        ttl_s=60.0, max_entries=None, now=None) -> int:
    return cache.insert(model=model, namespace=namespace, key_hash=key or f"k-{text}", query=text,
                        embedder="fp" if vector is not None else None, vector=vector,
                        response=response(text), usage={"prompt_tokens": 3,
                                                        "completion_tokens": 5,
                                                        "total_tokens": 8},
                        ttl_s=ttl_s, max_entries=max_entries, now=now)


def test_exact_lookup_returns_the_stored_answer(store):  # noqa: F811
    cache = CacheStore(store)
    entry_id = put(cache, "hello")
    entry = cache.exact("m", "k-hello")
    assert entry.id == entry_id
    assert entry.response["choices"][0]["message"]["content"] == "hello"
    assert entry.usage["completion_tokens"] == 5
    assert entry.kind == "exact"
    assert cache.exact("other-model", "k-hello") is None
    assert cache.exact("m", "k-other") is None


def test_expired_entries_are_never_served_and_are_swept(store):  # noqa: F811
    cache = CacheStore(store, refresh_interval_s=0)
    now = time.time()
    old = put(cache, "old", ttl_s=10, now=now - 20, vector=unit(1, 0))
    assert cache.exact("m", "k-old") is None
    assert cache.get(old) is None
    assert cache.candidates("ns", "fp", unit(1, 0)) == []  # not even loaded into the index
    assert cache.delete_expired() == 1
    assert cache_store.stats(store) == []


def test_an_entry_expiring_after_it_was_indexed_is_not_served(store):  # noqa: F811
    cache = CacheStore(store, refresh_interval_s=0)
    now = time.time()
    entry_id = put(cache, "soon", ttl_s=1000, now=now - 999.5, vector=unit(1, 0))
    assert [c[0] for c in cache.candidates("ns", "fp", unit(1, 0))] == [entry_id]
    assert cache.get(entry_id, now=now + 1) is None


def test_eviction_keeps_the_most_recently_used(store):  # noqa: F811
    cache = CacheStore(store)
    now = time.time()
    a = put(cache, "a", now=now - 30)
    b = put(cache, "b", now=now - 20)
    c = put(cache, "c", now=now - 10)
    cache.record_hit(a, now=now - 5)  # a was used after c was written: b is the oldest now
    put(cache, "d", max_entries=3, now=now)
    left = {e["model"]: e["entries"] for e in cache_store.stats(store)}
    assert left == {"m": 3}
    assert cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None
    put(cache, "other model", model="m2", max_entries=1)  # bounds are per model
    assert {e["model"]: e["entries"] for e in cache_store.stats(store)} == {"m": 3, "m2": 1}


def test_hits_are_counted(store):  # noqa: F811
    cache = CacheStore(store)
    entry_id = put(cache, "a")
    cache.record_hit(entry_id)
    cache.record_hit(entry_id)
    assert cache.get(entry_id).hits == 2
    assert cache_store.stats(store)[0]["hits"] == 2


def test_semantic_candidates_stay_in_their_namespace_and_embedder(store):  # noqa: F811
    cache = CacheStore(store, refresh_interval_s=0)
    near = put(cache, "near", vector=unit(1, 0.1))
    put(cache, "far", vector=unit(0, 1))
    put(cache, "other namespace", namespace="ns2", vector=unit(1, 0))
    found = cache.candidates("ns", "fp", unit(1, 0))
    assert found[0][0] == near
    assert found[0][1] > 0.99
    assert np.allclose(found[0][2], unit(1, 0.1))
    assert len(found) == 2
    assert cache.candidates("ns", "another-embedder", unit(1, 0)) == []


def test_a_second_store_sees_new_entries_after_its_refresh_interval(store):  # noqa: F811
    writer = CacheStore(store)
    reader = CacheStore(store, refresh_interval_s=0.2)
    assert reader.candidates("ns", "fp", unit(1, 0)) == []  # loads the (empty) namespace
    entry_id = put(writer, "new", vector=unit(1, 0))
    deadline = time.monotonic() + 10
    while not reader.candidates("ns", "fp", unit(1, 0)):
        assert time.monotonic() < deadline, "the reader never saw the writer's entry"
        time.sleep(0.05)
    assert reader.candidates("ns", "fp", unit(1, 0))[0][0] == entry_id


def test_a_late_row_older_than_the_newest_seen_is_still_loaded(store):  # noqa: F811
    reader = CacheStore(store, refresh_interval_s=0)
    writer = CacheStore(store)
    now = time.time()
    put(writer, "first", vector=unit(1, 0), now=now)
    assert len(reader.candidates("ns", "fp", unit(1, 0))) == 1
    # Another replica's clock runs 3 s behind: its row's created_at is older than what the
    # reader has seen, but within the look-back window.
    late = put(writer, "late", vector=unit(0, 1), now=now - 3)
    assert late in [c[0] for c in reader.candidates("ns", "fp", unit(0, 1))]


@pytest.mark.parametrize("how", ["all", "model", "namespace"])
def test_clear(store, how):  # noqa: F811
    cache = CacheStore(store)
    put(cache, "a", model="m1", namespace="n1")
    put(cache, "b", model="m1", namespace="n2")
    put(cache, "c", model="m2", namespace="n1")
    if how == "all":
        assert cache_store.clear(store) == 3
        assert cache_store.stats(store) == []
    elif how == "model":
        assert cache_store.clear(store, model="m1") == 2
        assert [s["model"] for s in cache_store.stats(store)] == ["m2"]
    else:
        assert cache_store.clear(store, namespace="n1") == 2
        assert [(n["model"], n["namespace"]) for n in cache_store.namespaces(store)] == [
            ("m1", "n2")]


def test_a_cleared_entry_in_another_stores_index_is_not_served(store):  # noqa: F811
    reader = CacheStore(store, refresh_interval_s=3600)
    entry_id = put(CacheStore(store), "a", vector=unit(1, 0))
    assert reader.candidates("ns", "fp", unit(1, 0))[0][0] == entry_id
    cache_store.clear(store)
    # The reader's index still proposes it, but reading it back finds nothing.
    assert reader.candidates("ns", "fp", unit(1, 0))[0][0] == entry_id
    assert reader.get(entry_id) is None
    reader.forget("ns", "fp", entry_id)
    assert reader.candidates("ns", "fp", unit(1, 0)) == []


def test_stats(store):  # noqa: F811
    cache = CacheStore(store)
    put(cache, "a", vector=unit(1, 0))
    put(cache, "b", namespace="other")
    put(cache, "gone", ttl_s=1, now=time.time() - 10)
    (row,) = cache_store.stats(store)
    assert row["entries"] == 3 and row["live"] == 2 and row["expired"] == 1
    assert row["semantic"] == 1 and row["namespaces"] == 2


def test_the_cli_lists_and_clears_entries(store, db_url):  # noqa: F811
    import orjson
    from click.testing import CliRunner

    from keel.cli.main import cli

    cache = CacheStore(store)
    put(cache, "a", model="m1", namespace="n1", vector=unit(1, 0))
    put(cache, "b", model="m1", namespace="n2")
    put(cache, "c", model="m2", namespace="n1")
    runner = CliRunner()
    result = runner.invoke(cli, ["cache", "stats", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    assert {r["model"]: r["entries"] for r in orjson.loads(result.output)} == {"m1": 2, "m2": 1}
    result = runner.invoke(cli, ["cache", "stats", "--db", db_url, "--namespaces"])
    assert result.exit_code == 0, result.output
    assert "n1" in result.output and "m2" in result.output
    result = runner.invoke(cli, ["cache", "clear", "--db", db_url, "--model", "m1",
                                 "--namespace", "n2"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 cache entry" in result.output
    result = runner.invoke(cli, ["cache", "clear", "--db", db_url, "--model", "m1"])
    assert "deleted 1 cache entry" in result.output
    result = runner.invoke(cli, ["cache", "clear", "--db", db_url])
    assert "deleted 1 cache entry" in result.output
    result = runner.invoke(cli, ["cache", "stats", "--db", db_url])
    assert result.exit_code == 0 and "the cache is empty" in result.output


def test_a_new_answer_for_the_same_key_replaces_the_old(store):  # noqa: F811
    cache = CacheStore(store, refresh_interval_s=0)
    old = put(cache, "a", vector=unit(1, 0))
    assert cache.candidates("ns", "fp", unit(1, 0))[0][0] == old
    new = put(cache, "a", vector=unit(1, 0))
    assert cache.get(old) is None
    assert cache.exact("m", "k-a").id == new
    assert [c[0] for c in cache.candidates("ns", "fp", unit(1, 0)) if cache.get(c[0])] == [new]


def test_the_in_memory_index_grows_sorts_and_drops_in_place():
    from keel.orchestration.cache.store import _Namespace

    ns = _Namespace()
    vectors = {i: unit(np.cos(i), np.sin(i), 0.1 * i) for i in range(1, 200)}
    order = list(range(100, 200)) + list(range(1, 100))  # a replica's older rows arrive late
    ns.add([(i, vectors[i].astype("<f4").tobytes(), 1.0) for i in order])
    ns.add([(5, vectors[5].tobytes(), 1.0)])  # already known: ignored
    assert ns.size == 199 and list(ns.ids[:199]) == sorted(vectors)
    for i in (1, 77, 150, 199):
        best_id, score, vector = ns.search(vectors[i], 1)[0]
        assert best_id == i and score == pytest.approx(1.0, abs=1e-5)
        assert np.allclose(vector, vectors[i])
    ns.drop(77)
    assert ns.size == 198 and 77 not in ns.ids[:198]
    assert ns.search(vectors[77], 1)[0][0] != 77
    assert ns.search(vectors[150], 1)[0][0] == 150


def test_the_writer_batches_and_the_later_answer_to_one_key_wins(store):  # noqa: F811
    from concurrent.futures import Future

    cache = CacheStore(store)

    def queued(text: str, key: str, vector=None):
        arguments = dict(model="m", namespace="ns", key_hash=key, query=text,
                         embedder="fp" if vector is not None else None, vector=vector,
                         response=response(text), usage=None, ttl_s=60.0, max_entries=None)
        return ("insert", arguments, Future())

    batch = [queued("first", "same"), queued("other", "k-other", unit(1, 0)),
             queued("second", "same")]
    ids = cache._write_batch(batch)  # one transaction, as the writer thread runs it
    assert ids[0] == ids[2] != ids[1]
    assert cache.exact("m", "same").response["choices"][0]["message"]["content"] == "second"
    assert sum(s["entries"] for s in cache_store.stats(store)) == 2
    # Through the writer thread: submit returns at once, the future holds the entry's id.
    future = cache.submit(**batch[1][1] | {"key_hash": "k-third", "query": "third"})
    assert future.result(timeout=10) > max(ids)
    cache.refresh_keys()
    assert cache.knows("m", "k-third") is True and cache.knows("m", "k-none") is False
    cache.close()
