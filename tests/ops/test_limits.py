"""Rate limits and budgets at their edges: the Nth request admitted, the N+1th refused.

The Limiter runs on the in-memory state (one process) and on a real Redis (several replicas,
and Redis going away), with the store's usage_daily as the memory of what was spent.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from keel.config import KeelConfig, PricingConfig, RateLimitConfig
from keel.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from keel.ops.limits import Limiter, _duration, period_of
from keel.ops.principal import ANONYMOUS, SURFACES, Principal
from keel.ops.traces import TraceRecorder
from keel.pipeline.trace import Trace
from keel.state import StateUnavailable
from keel.state.memory import MemoryState
from keel.store import open_store
from tests.ops.helpers import make_trace, tracing

PRICING = PricingConfig(input=1000.0, output=2000.0)  # US$ per million tokens: 0.001 per token


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def counter(self, name, documentation, labelnames):
        metrics = self

        class _Labelled:
            def __init__(self, labels):
                self.labels_ = labels

            def inc(self, amount=1):
                key = (name, self.labels_["operation"])
                metrics.counts[key] = metrics.counts.get(key, 0) + amount

        class _Counter:
            def labels(self, **labels):
                return _Labelled(labels)

        return _Counter()


class FakeRuntime:
    def __init__(self, state, store=None) -> None:
        self.state = state
        self.metrics = FakeMetrics()
        self._store = store

    @property
    def store(self):
        return self._store


class DownState:
    """A shared state that is never reachable."""

    calls = 0

    async def admit(self, buckets, quotas):
        self.calls += 1
        raise StateUnavailable("connection refused")

    async def settle(self, debits, adds):
        self.calls += 1
        raise StateUnavailable("connection refused")

    async def seed(self, key, value, expires_s):
        raise StateUnavailable("connection refused")


class UntouchedState:
    async def admit(self, buckets, quotas):
        raise AssertionError("the state must not be called when no limit applies")

    settle = seed = admit


def config(**sections) -> KeelConfig:
    return KeelConfig.model_validate(sections)


def key(name="team-a", key_id="key_a", **fields) -> Principal:
    return Principal(key_id=key_id, name=name, surfaces=frozenset(SURFACES), **fields)


async def call(limiter, principal, model="m", limits=None, *, tokens=0, pricing=None):
    """Admit one request and settle it as finished with `tokens` (half in, half out)."""
    trace = Trace(model=model)
    headers = await limiter.admit(principal, trace, model, limits)
    trace.prompt_tokens = tokens // 2
    trace.completion_tokens = tokens - tokens // 2
    trace.total_tokens = tokens
    if pricing is not None:
        trace.cost_usd = pricing.cost(trace.prompt_tokens, trace.completion_tokens)
    limiter.settle(trace)
    await settled(limiter)
    return headers


async def settled(limiter) -> None:
    await limiter.aclose()


def memory_limiter(**sections) -> Limiter:
    return Limiter(config(**sections), FakeRuntime(MemoryState()))


# -- requests per minute -----------------------------------------------------------------------


async def test_key_rpm_admits_n_then_refuses_with_retry_after_and_headers():
    limiter = memory_limiter()
    principal = key(rpm=3)
    remaining = []
    for _ in range(3):
        headers = await call(limiter, principal)
        assert headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
        assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == [2, 1, 0]
    assert "x-ratelimit-limit-tokens" not in headers  # no tokens limit applies
    with pytest.raises(RateLimited) as refused:
        await call(limiter, principal)
    exc = refused.value
    assert exc.status == 429 and exc.type == "requests" and exc.code == "rate_limit_exceeded"
    assert int(exc.headers["Retry-After"]) >= 1
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert exc.message.startswith(
        "Rate limit reached for requests per minute (rpm) on key team-a: Limit 3, Used 3, "
        "Requested 1. Please try again in ")
    # Another key has a bucket of its own.
    assert (await call(limiter, key("team-b", "key_b", rpm=3)))[
        "x-ratelimit-remaining-requests"] == "2"


async def test_refused_requests_do_not_consume():
    clock = [1000.0]
    limiter = Limiter(config(), FakeRuntime(MemoryState(clock=lambda: clock[0])))
    principal = key(rpm=2)
    await call(limiter, principal)
    await call(limiter, principal)
    for _ in range(5):
        with pytest.raises(RateLimited):
            await call(limiter, principal)
    clock[0] += 30.0  # half a minute refills one request, however many were refused meanwhile
    await call(limiter, principal)
    with pytest.raises(RateLimited):
        await call(limiter, principal)


async def test_model_rpm_is_shared_by_every_caller():
    limiter = memory_limiter()
    limits = RateLimitConfig(rpm=3)
    await call(limiter, ANONYMOUS, limits=limits)
    await call(limiter, key("a", "key_a"), limits=limits)
    headers = await call(limiter, key("b", "key_b"), limits=limits)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as refused:
        await call(limiter, ANONYMOUS, limits=limits)
    assert "on model m:" in refused.value.message
    # Another model's limit is its own.
    await call(limiter, ANONYMOUS, model="other", limits=limits)


async def test_headers_name_the_tightest_bucket():
    limiter = memory_limiter()
    principal = key(rpm=100)
    headers = await call(limiter, principal, limits=RateLimitConfig(rpm=2))
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"


# -- tokens per minute -------------------------------------------------------------------------


async def test_tpm_refuses_after_a_call_that_used_more_than_the_limit():
    limiter = memory_limiter()
    principal = key(tpm=100)
    headers = await call(limiter, principal, tokens=150)
    assert headers["x-ratelimit-limit-tokens"] == "100"
    assert headers["x-ratelimit-remaining-tokens"] == "100"  # checked before the call
    assert "x-ratelimit-limit-requests" not in headers
    with pytest.raises(RateLimited) as refused:
        await call(limiter, principal)
    exc = refused.value
    assert exc.type == "tokens" and exc.status == 429
    assert "tokens per minute (tpm) on key team-a: Limit 100, Used 150" in exc.message
    # 50 below zero: half a minute's refill before the bucket holds a token again.
    assert int(exc.headers["Retry-After"]) >= 30


async def test_tpm_admits_while_tokens_are_left():
    limiter = memory_limiter()
    principal = key(tpm=100)
    await call(limiter, principal, tokens=60)
    headers = await call(limiter, principal, tokens=30)
    assert int(headers["x-ratelimit-remaining-tokens"]) in (39, 40)  # refilled a little
    await call(limiter, principal)


async def test_model_tpm_is_debited_by_every_caller():
    limiter = memory_limiter()
    limits = RateLimitConfig(tpm=50)
    await call(limiter, key("a", "key_a"), limits=limits, tokens=80)
    with pytest.raises(RateLimited):
        await call(limiter, key("b", "key_b"), limits=limits)


# -- budgets -----------------------------------------------------------------------------------


async def test_key_budget_admits_the_crossing_request_and_refuses_the_next():
    limiter = memory_limiter()
    # Each call costs 10 tokens * 0.001 in + 10 * 0.002 out = $0.03.
    principal = key(budget_usd=0.08, period="month")
    for _ in range(3):  # spent 0, 0.03, 0.06 before each: all under 0.08; 0.09 after the third
        await call(limiter, principal, tokens=20, pricing=PRICING)
    with pytest.raises(QuotaExceeded) as refused:
        await call(limiter, principal, tokens=20, pricing=PRICING)
    exc = refused.value
    assert exc.status == 429 and exc.type == "insufficient_quota"
    assert exc.code == "insufficient_quota"
    label, _ = period_of("month", time.time())
    assert exc.message.startswith("You exceeded your current quota on key team-a")
    assert "$0.08 budget" in exc.message and label in exc.message
    spent = await limiter.runtime.state.get(f"spend:key:key_a:{label}")
    assert spent == pytest.approx(0.09)


async def test_day_budget_counts_on_a_daily_counter():
    limiter = memory_limiter()
    principal = key(budget_usd=0.01, period="day")
    await call(limiter, principal, tokens=20, pricing=PRICING)
    with pytest.raises(QuotaExceeded) as refused:
        await call(limiter, principal)
    label, _ = period_of("day", time.time())
    assert label in refused.value.message and "day" in refused.value.message
    assert await limiter.runtime.state.get(f"spend:key:key_a:{label}") == pytest.approx(0.03)


async def test_team_budget_is_shared_by_the_team_keys():
    limiter = memory_limiter(limits={"teams": {"search": {"budget_usd": 0.05, "period": "day"}}})
    alice = key("alice", "key_alice", metadata={"team": "search"})
    bob = key("bob", "key_bob", metadata={"team": "search"})
    other = key("carol", "key_carol", metadata={"team": "ads"})
    await call(limiter, alice, tokens=20, pricing=PRICING)
    await call(limiter, alice, tokens=20, pricing=PRICING)  # 0.06 spent by the team
    with pytest.raises(QuotaExceeded) as refused:
        await call(limiter, bob)
    assert "team search" in refused.value.message
    await call(limiter, other, tokens=20, pricing=PRICING)  # another team: no budget


async def test_unpriced_models_spend_nothing():
    limiter = memory_limiter()
    principal = key(budget_usd=0.01, period="month")
    for _ in range(5):
        await call(limiter, principal, tokens=1000)  # no pricing: cost_usd stays None


# -- the default path --------------------------------------------------------------------------


async def test_no_limits_returns_nothing_without_touching_the_state():
    limiter = Limiter(config(), FakeRuntime(UntouchedState()))
    trace = Trace()
    assert await limiter.admit(ANONYMOUS, trace, "m", None) == {}
    assert await limiter.admit(key(), trace, "m", RateLimitConfig()) == {}
    assert await limiter.admit(key(metadata={"team": "nobudget"}), trace, "m", None) == {}
    assert trace.admission is None
    limiter.settle(trace)  # nothing to settle
    await limiter.aclose()


# -- the shared state away ---------------------------------------------------------------------


async def test_state_away_fails_open_with_one_warning_and_a_count(caplog):
    state = DownState()
    limiter = Limiter(config(state={"on_error": "open"}), FakeRuntime(state))
    with caplog.at_level(logging.WARNING, logger="keel.ops.limits"):
        for _ in range(3):
            principal = key(rpm=1, tpm=100, budget_usd=5.0, period="day")
            assert await call(limiter, principal, tokens=10, pricing=PRICING) == {}
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert limiter.runtime.metrics.counts[("keel_state_errors_total", "admit")] == 3
    assert limiter.runtime.metrics.counts[("keel_state_errors_total", "settle")] == 3


async def test_state_away_fails_closed_with_503():
    limiter = Limiter(config(state={"on_error": "closed"}), FakeRuntime(DownState()))
    with pytest.raises(ServiceUnavailable) as refused:
        await call(limiter, key(rpm=1))
    assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "1"
    # No limit applies: nothing to check, so nothing to refuse.
    assert await call(limiter, ANONYMOUS) == {}


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_redis_nobody_listens_on(on_error):
    from keel.state.redis import RedisState
    from tests.redis_server import free_port

    state = RedisState(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    limiter = Limiter(config(state={"on_error": on_error}), FakeRuntime(state))
    try:
        if on_error == "open":
            assert await call(limiter, key(rpm=1), tokens=5, pricing=PRICING) == {}
            assert await call(limiter, key(rpm=1)) == {}
        else:
            with pytest.raises(ServiceUnavailable):
                await call(limiter, key(rpm=1))
    finally:
        await state.aclose()


@pytest.mark.redis
async def test_two_replicas_share_limits_and_spend_through_redis(redis_url):
    from keel.state.redis import RedisState

    states = [RedisState(redis_url), RedisState(redis_url)]
    replicas = [Limiter(config(), FakeRuntime(s)) for s in states]
    try:
        principal = key(rpm=4, budget_usd=1.0, period="day")
        admitted = 0
        for i in range(6):
            try:
                await call(replicas[i % 2], principal, tokens=20, pricing=PRICING)
                admitted += 1
            except RateLimited:
                pass
        assert admitted == 4
        label, _ = period_of("day", time.time())
        assert await states[0].get(f"spend:key:key_a:{label}") == pytest.approx(0.12)
    finally:
        for state in states:
            await state.aclose()


@pytest.mark.redis
async def test_redis_going_away_mid_run(redis_server):
    from keel.state.redis import RedisState

    state = RedisState(redis_server.url, timeout_s=0.2)
    closed = Limiter(config(state={"on_error": "closed"}), FakeRuntime(state))
    opened = Limiter(config(state={"on_error": "open"}), FakeRuntime(state))
    try:
        assert (await call(closed, key(rpm=10)))["x-ratelimit-remaining-requests"] == "9"
        redis_server.stop()
        with pytest.raises(ServiceUnavailable):
            await call(closed, key(rpm=10))
        assert await call(opened, key(rpm=10)) == {}
        redis_server.start()  # back, empty
        deadline = time.monotonic() + 10
        while True:
            try:
                headers = await call(closed, key(rpm=10))
                break
            except ServiceUnavailable:
                assert time.monotonic() < deadline, "Redis came back but limits did not"
                await asyncio.sleep(0.1)
        assert headers["x-ratelimit-limit-requests"] == "10"
    finally:
        await state.aclose()


# -- restarts ----------------------------------------------------------------------------------


async def test_spend_is_seeded_from_usage_daily_after_a_restart(db_url):
    store = open_store(db_url)
    try:
        recorder = TraceRecorder(store, tracing())
        for n in range(3):  # $0.04 for key_a (team search), $0.02 for key_b (team search)
            trace = make_trace(n, key_id="key_a" if n < 2 else "key_b",
                               key_metadata={"team": "search"}, cost_usd=0.02)
            recorder.submit(trace)
        recorder.close()
        sections = {"limits": {"teams": {"search": {"budget_usd": 0.06}}}}
        limiter = Limiter(config(**sections), FakeRuntime(MemoryState(), store))
        await limiter.start()
        state = limiter.runtime.state
        month, _ = period_of("month", time.time())
        day, _ = period_of("day", time.time())
        assert await state.get(f"spend:key:key_a:{month}") == pytest.approx(0.04)
        assert await state.get(f"spend:key:key_a:{day}") == pytest.approx(0.04)
        assert await state.get(f"spend:team:search:{month}") == pytest.approx(0.06)
        # The team's budget is spent already: the restart did not forget it.
        with pytest.raises(QuotaExceeded):
            await call(limiter, key("b", "key_b", metadata={"team": "search"}))
        # A key with a budget of its own is refused on the seeded counter too.
        with pytest.raises(QuotaExceeded):
            await call(limiter, key("a", "key_a", budget_usd=0.04, period="day"))
        # Seeding never overwrites what the shared state already holds.
        await state.seed(f"spend:key:key_a:{month}", 9.0, 60)
        assert await state.get(f"spend:key:key_a:{month}") == pytest.approx(0.04)
    finally:
        store.close()


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (1.2, "1.2s"), (59.5, "59.5s"),
    (360, "6m0s"), (61.25, "1m1.25s"), (3723, "1h2m3s"),
])
def test_durations_in_openai_format(seconds, text):
    assert _duration(seconds) == text


def test_periods_are_utc_days_and_months():
    at = 1_798_761_599.0  # 2026-12-31 23:59:59 UTC
    assert period_of("day", at) == ("2026-12-31", 1_798_761_600.0)
    assert period_of("month", at) == ("2026-12", 1_798_761_600.0)
    assert period_of("month", at + 1)[0] == "2027-01"
