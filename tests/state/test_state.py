"""The shared state's contract, the same on MemoryState and RedisState; then what only Redis has:
several clients on one server, an outage and the recovery after it.

Windows are long (an hour) where a test counts admits exactly, so the refill during a slow CI
run cannot add a token; the refill tests use windows of a second or two and sleep well past
the moment the bucket must have refilled.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio

from keel.state import Add, Bucket, Debit, Quota, StateUnavailable
from keel.state.redis import RedisState

HOUR = 3600.0


async def test_a_bucket_admits_exactly_its_capacity_then_refuses(state):
    bucket = Bucket("rpm:k", capacity=5, window_s=HOUR)
    verdicts = [await state.admit([bucket], []) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert [round(v.buckets[0].remaining) for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    refused = verdicts[5]
    assert refused.refused_by == 0
    # one token comes back every 720 s; a slow run has refilled a little of it already
    assert 600 < refused.buckets[0].retry_after_s <= 720
    assert refused.buckets[0].reset_s == pytest.approx(HOUR, rel=0.01)
    assert verdicts[0].buckets[0].retry_after_s == 0
    assert verdicts[0].buckets[0].reset_s == pytest.approx(720, rel=0.01)


async def test_a_refusal_consumes_nothing(state):
    wide = Bucket("rpm:wide", capacity=10, window_s=HOUR)
    narrow = Bucket("rpm:narrow", capacity=1, window_s=HOUR)
    assert (await state.admit([narrow], [])).allowed
    refused = await state.admit([wide, narrow], [])
    assert not refused.allowed and refused.refused_by == 1
    assert refused.buckets[0].retry_after_s == 0 and refused.buckets[1].retry_after_s > 0
    # a quota refusal: its index counts the buckets first
    await state.settle([], [Add("spend:team", 10.0, expires_s=HOUR)])
    refused = await state.admit([wide], [Quota("spend:none", 5), Quota("spend:team", 10)])
    assert not refused.allowed and refused.refused_by == 2
    assert refused.spent == (0.0, 10.0)
    # neither refusal took a token from the wide bucket
    after = await state.admit([wide], [])
    assert after.allowed and round(after.buckets[0].remaining) == 9


async def test_take_zero_refuses_only_when_empty_and_debits_go_below_zero(state):
    tpm = Bucket("tpm:k", capacity=10, window_s=1, take=0)
    first = await state.admit([tpm], [])
    assert first.allowed and first.buckets[0].remaining == pytest.approx(10)
    await state.settle([Debit("tpm:k", capacity=10, window_s=1, amount=30)], [])
    refused = await state.admit([tpm], [])
    assert not refused.allowed and refused.refused_by == 0
    level = refused.buckets[0]
    assert level.remaining < 0
    # 20 tokens below zero at 10 a second: about two seconds (less the time this run took)
    assert 0.5 < level.retry_after_s <= 2.0
    assert level.reset_s == pytest.approx(level.retry_after_s + 1.0, abs=1e-3)
    await asyncio.sleep(level.retry_after_s + 0.3)
    assert (await state.admit([tpm], [])).allowed


async def test_a_bucket_refills_over_its_window(state):
    bucket = Bucket("rpm:fast", capacity=2, window_s=1)
    assert (await state.admit([bucket], [])).allowed
    assert (await state.admit([bucket], [])).allowed
    refused = await state.admit([bucket], [])
    if refused.allowed:
        pytest.fail("a 2-token bucket admitted a third request at once")
    assert 0 < refused.buckets[0].retry_after_s <= 0.5
    await asyncio.sleep(1.3)  # a whole window: full again
    again = [await state.admit([bucket], []) for _ in range(2)]
    assert all(v.allowed for v in again)


async def test_quotas_refuse_at_their_limit_and_counters_add(state):
    quota = Quota("spend:k", limit=1.0)
    assert (await state.admit([], [quota])).spent == (0.0,)
    await state.settle([], [Add("spend:k", 0.25, expires_s=HOUR)])
    await state.settle([], [Add("spend:k", 0.5, expires_s=HOUR)])
    assert await state.get("spend:k") == pytest.approx(0.75)
    verdict = await state.admit([], [quota])
    assert verdict.allowed and verdict.spent == (pytest.approx(0.75),)
    await state.settle([], [Add("spend:k", 0.25, expires_s=HOUR)])
    verdict = await state.admit([], [quota])
    assert not verdict.allowed and verdict.refused_by == 0
    assert verdict.spent == (pytest.approx(1.0),)
    assert await state.get("spend:unknown") is None


async def test_seed_does_not_overwrite_and_counters_expire(state):
    await state.seed("spend:seeded", 5.0, expires_s=HOUR)
    await state.seed("spend:seeded", 9.0, expires_s=HOUR)
    assert await state.get("spend:seeded") == 5.0
    await state.settle([], [Add("spend:short", 2.0, expires_s=0.3)])
    await state.seed("spend:brief", 3.0, expires_s=0.3)
    assert await state.get("spend:short") == 2.0
    await asyncio.sleep(1.0)
    assert await state.get("spend:short") is None
    assert await state.get("spend:brief") is None
    await state.seed("spend:brief", 4.0, expires_s=HOUR)  # an expired counter may be seeded
    assert await state.get("spend:brief") == 4.0
    assert await state.get("spend:seeded") == 5.0


async def test_nothing_to_check_is_admitted(state):
    verdict = await state.admit([], [])
    assert verdict.allowed and verdict.buckets == () and verdict.spent == ()
    await state.settle([], [])
    assert await state.ping()


# What only Redis has.


@pytest.mark.redis
async def test_two_clients_on_one_server_admit_exactly_the_capacity(redis_url):
    first, second = (RedisState(redis_url, timeout_s=10) for _ in range(2))
    bucket = Bucket("rpm:shared", capacity=50, window_s=HOUR)
    try:
        verdicts = await asyncio.gather(
            *(client.admit([bucket], []) for _ in range(100) for client in (first, second)))
    finally:
        await first.aclose()
        await second.aclose()
    assert len(verdicts) == 200
    assert sum(v.allowed for v in verdicts) == 50


@pytest.mark.redis
async def test_keys_are_prefixed_and_buckets_expire_once_full(redis_url):
    state = RedisState(redis_url, prefix="p1:", timeout_s=5)
    other = RedisState(redis_url, prefix="p2:", timeout_s=5)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        await state.admit([Bucket("rpm:k", capacity=1, window_s=HOUR)], [])
        await state.settle([], [Add("spend:k", 1.5, expires_s=HOUR)])
        assert sorted(await raw.keys("*")) == [b"p1:rpm:k", b"p1:spend:k"]
        assert await raw.hget("p1:rpm:k", "tokens") == b"0"
        # kept until full again (one window) plus one window
        assert 2 * HOUR - 60 < await raw.ttl("p1:rpm:k") <= 2 * HOUR
        assert HOUR - 60 < await raw.ttl("p1:spend:k") <= HOUR
        # another prefix shares nothing
        assert (await other.admit([Bucket("rpm:k", capacity=1, window_s=HOUR)], [])).allowed
        assert await other.get("spend:k") is None
    finally:
        await state.aclose()
        await other.aclose()
        await raw.aclose()


@pytest.mark.redis
async def test_scripts_are_loaded_again_after_a_script_flush(redis_url):
    state = RedisState(redis_url, timeout_s=5)
    raw = redis.asyncio.Redis.from_url(redis_url)
    bucket = Bucket("rpm:k", capacity=2, window_s=HOUR)
    try:
        assert (await state.admit([bucket], [])).allowed
        await raw.script_flush()
        assert (await state.admit([bucket], [])).allowed
        assert not (await state.admit([bucket], [])).allowed
    finally:
        await state.aclose()
        await raw.aclose()


@pytest.mark.redis
async def test_redis_away_raises_quickly_and_the_same_client_recovers(redis_server):
    state = RedisState(redis_server.url, timeout_s=0.25)
    bucket = Bucket("rpm:k", capacity=5, window_s=HOUR)
    try:
        assert (await state.admit([bucket], [])).allowed  # a pooled connection, soon dead
        redis_server.stop()
        for operation in (lambda: state.admit([bucket], []),
                          lambda: state.settle([], [Add("spend:k", 1, expires_s=60)]),
                          lambda: state.seed("spend:k", 1, expires_s=60),
                          lambda: state.get("spend:k")):
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await operation()
            assert time.monotonic() - started < 1.5
        assert await state.ping() is False
        redis_server.start()
        verdict = await state.admit([bucket], [])  # a fresh server: a full bucket
        assert verdict.allowed and round(verdict.buckets[0].remaining) == 4
        assert await state.ping() is True
    finally:
        await state.aclose()


@pytest.mark.redis
async def test_a_redis_that_does_not_answer_times_out(redis_server):
    state = RedisState(redis_server.url, timeout_s=0.25)
    bucket = Bucket("rpm:k", capacity=5, window_s=HOUR)
    try:
        assert (await state.admit([bucket], [])).allowed
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await state.admit([bucket], [])
            assert time.monotonic() - started < 1.5
        finally:
            redis_server.resume()
        assert (await state.admit([bucket], [])).allowed
    finally:
        await state.aclose()
