"""State that several Keel replicas share: rate-limit buckets and spend counters.

One `SharedState` per process (`Runtime.state`), chosen by keel.yaml's `state:` section:

- `MemoryState` (`keel.state.memory`): this process's memory. The default; right for one
  process, wrong for several (each would keep its own limits).
- `RedisState` (`keel.state.redis`): a Redis server every replica talks to; each `admit` and
  `settle` is one round trip (a Lua script, so a check and its consumption are atomic).

The layers still to come (the cache, the router's circuit breakers) share their state the same
way. The operations are Keel's own, not a general key-value API, so that a request's checks cost
one round trip however many limits apply:

- a **bucket** is a token bucket: `capacity` tokens, refilled at `capacity / window_s` per
  second. Requests per minute take 1 token per request; tokens per minute require the bucket not
  to be empty before the call and are debited with the real count after it (so it may go below
  zero, and the next calls wait for the refill), as OpenAI's own limits behave.
- a **counter** adds up spend for a period; `expires_s` lets the store forget a period that is
  over. A quota check refuses when the counter has reached its limit.

`admit` is all or nothing: when any check fails, nothing is consumed. A backend that cannot be
reached raises `StateUnavailable`; the caller decides to fail open or closed (`state.on_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StateUnavailable(Exception):
    """The shared state could not be reached in time (Redis down, timeout)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    capacity: float
    window_s: float = 60.0
    take: float = 1.0  # consumed by admit; 0: only check that the bucket is not empty


@dataclass(frozen=True, slots=True)
class Quota:
    key: str  # a counter
    limit: float  # refused once the counter is >= limit


@dataclass(frozen=True, slots=True)
class BucketLevel:
    remaining: float  # tokens left after this admit (may be negative for token buckets)
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # seconds until the refused take would fit (0 when admitted)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    buckets: tuple[BucketLevel, ...]  # one per bucket, in the order given
    spent: tuple[float, ...]  # each quota's counter, in the order given
    refused_by: int | None = None  # index into buckets + quotas (buckets first) of the first refusal


@dataclass(frozen=True, slots=True)
class Debit:
    key: str  # a bucket, debited by `amount` (tokens used after the call)
    capacity: float
    window_s: float
    amount: float


@dataclass(frozen=True, slots=True)
class Add:
    key: str  # a counter, increased by `amount`
    amount: float
    expires_s: float  # the counter is forgotten this long after its last change


class SharedState(Protocol):
    async def admit(self, buckets: list[Bucket], quotas: list[Quota]) -> Verdict: ...

    async def settle(self, debits: list[Debit], adds: list[Add]) -> None: ...

    async def seed(self, key: str, value: float, expires_s: float) -> None:
        """Set a counter only if it does not exist yet (a period's spend, read back from the
        store at start-up, so a restart does not forget what was spent)."""

    async def get(self, key: str) -> float | None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


def open_state(config) -> SharedState:
    """The backend keel.yaml's `state:` section (a `keel.config.StateConfig`) names."""
    if config.redis_url:
        from keel.state.redis import RedisState

        return RedisState(config.redis_url, prefix=config.prefix, timeout_s=config.timeout_s)
    from keel.state.memory import MemoryState

    return MemoryState()
