"""`RedisState`: the shared state kept in a Redis server that every replica talks to.

`admit` and `settle` are each one round trip: a Lua script (EVALSHA, loaded again by redis-py
when the server has forgotten it) that reads, checks and writes every key of a request at once,
so no other replica can slip in between the check and the consumption. The scripts read the time
from Redis (`TIME`), not from the replica, so replicas whose clocks disagree still refill a
bucket at the same pace.

What lives in Redis, every key behind `prefix`:
- a bucket is a hash {tokens, at} (`at`: Redis time of the last write, in seconds), kept until
  it would be full again plus one window: a missing bucket reads as full, so nothing is lost;
- a counter is a string (INCRBYFLOAT), kept `expires_s` after its last change.

Redis away, refusing, or slower than `timeout_s` raises `StateUnavailable`, never a longer wait;
the connection pool opens new connections on the next call, so Keel carries on by itself once
Redis is back.
"""

from __future__ import annotations

import asyncio
import math

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keel.state import Add, Bucket, BucketLevel, Debit, Quota, StateUnavailable, Verdict

# Shared by both scripts: a bucket's level now, refilled since its last write (a missing bucket
# is full). max(0, ...) because Redis's clock may step back (NTP); a bucket must not drain then.
_LEVEL = """
local function level(key, capacity, window, now)
  local found = redis.call('HMGET', key, 'tokens', 'at')
  if not found[1] then return capacity end
  local refill = math.max(0, now - tonumber(found[2])) * capacity / window
  return math.min(capacity, tonumber(found[1]) + refill)
end
local function store(key, tokens, capacity, window, now)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
             'at', string.format('%.17g', now))
  local full_in = (capacity - tokens) * window / capacity + window
  redis.call('PEXPIRE', key, math.max(1, math.ceil(full_in * 1000)))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: the buckets, then the quotas' counters. ARGV: the number of buckets, then capacity,
# window_s and take for each bucket, then each quota's limit. Returns the index of the first
# refusal (-1: admitted), each bucket's tokens after the admit, each quota's counter. Numbers
# go back as strings: Redis would truncate a Lua number to an integer.
_ADMIT = _LEVEL + """
local nb = tonumber(ARGV[1])
local refused = -1
local levels = {}
for i = 1, nb do
  local capacity, window, take = tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3]), tonumber(ARGV[i*3+1])
  levels[i] = level(KEYS[i], capacity, window, now)
  if refused < 0 and (levels[i] < take or levels[i] <= 0) then refused = i - 1 end
end
local out = {}
local spent = {}
for j = 1, #KEYS - nb do
  local value = tonumber(redis.call('GET', KEYS[nb + j]) or '0')
  spent[j] = string.format('%.17g', value)
  if refused < 0 and value >= tonumber(ARGV[nb*3 + 1 + j]) then refused = nb + j - 1 end
end
out[1] = refused
for i = 1, nb do
  local capacity, window, take = tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3]), tonumber(ARGV[i*3+1])
  if refused < 0 and take ~= 0 then
    levels[i] = levels[i] - take
    store(KEYS[i], levels[i], capacity, window, now)
  end
  out[i + 1] = string.format('%.17g', levels[i])
end
for j = 1, #spent do out[nb + 1 + j] = spent[j] end
return out
"""

# KEYS: the debited buckets, then the counters to add to. ARGV: the number of buckets, then
# capacity, window_s and amount for each bucket, then amount and expiry (ms) for each counter.
_SETTLE = _LEVEL + """
local nd = tonumber(ARGV[1])
for i = 1, nd do
  local capacity, window, amount = tonumber(ARGV[i*3-1]), tonumber(ARGV[i*3]), tonumber(ARGV[i*3+1])
  store(KEYS[i], level(KEYS[i], capacity, window, now) - amount, capacity, window, now)
end
for j = 1, #KEYS - nd do
  local at = nd*3 + 2*j
  redis.call('INCRBYFLOAT', KEYS[nd + j], ARGV[at])
  redis.call('PEXPIRE', KEYS[nd + j], ARGV[at + 1])
end
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisState:
    def __init__(self, url: str, prefix: str = "keel:", timeout_s: float = 0.25) -> None:
        self._prefix = prefix
        self._timeout_s = timeout_s
        # One immediate retry, on connection errors only: after Redis restarts, the pool's idle
        # connections are dead and the first command on one fails; the retry opens a new one.
        # Timeouts are not retried: the caller is waiting.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._redis = Redis.from_url(url, socket_connect_timeout=timeout_s,
                                     socket_timeout=timeout_s, retry=retry)
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)

    async def admit(self, buckets: list[Bucket], quotas: list[Quota]) -> Verdict:
        if not buckets and not quotas:
            return Verdict(allowed=True, buckets=(), spent=())
        keys = [self._prefix + b.key for b in buckets] + [self._prefix + q.key for q in quotas]
        args: list[float] = [len(buckets)]
        for b in buckets:
            args += [b.capacity, b.window_s, b.take]
        args += [q.limit for q in quotas]
        reply = await self._call("admit", self._admit(keys=keys, args=args))
        refused = int(reply[0])
        refused = None if refused < 0 else refused
        levels = []
        for i, bucket in enumerate(buckets):
            tokens = float(reply[1 + i])
            rate = bucket.capacity / bucket.window_s
            need = max(bucket.take, 1e-9) - tokens if i == refused else 0.0
            levels.append(BucketLevel(
                remaining=tokens,
                reset_s=max(0.0, (bucket.capacity - tokens) / rate),
                retry_after_s=max(0.0, need / rate),
            ))
        spent = tuple(float(v) for v in reply[1 + len(buckets):])
        return Verdict(allowed=refused is None, buckets=tuple(levels), spent=spent,
                       refused_by=refused)

    async def settle(self, debits: list[Debit], adds: list[Add]) -> None:
        if not debits and not adds:
            return
        keys = [self._prefix + d.key for d in debits] + [self._prefix + a.key for a in adds]
        args: list[float] = [len(debits)]
        for d in debits:
            args += [d.capacity, d.window_s, d.amount]
        for a in adds:
            args += [a.amount, _ms(a.expires_s)]
        await self._call("settle", self._settle(keys=keys, args=args))

    async def seed(self, key: str, value: float, expires_s: float) -> None:
        await self._call("seed", self._redis.set(self._prefix + key, value, nx=True,
                                                 px=_ms(expires_s)))

    async def get(self, key: str) -> float | None:
        found = await self._call("get", self._redis.get(self._prefix + key))
        return None if found is None else float(found)

    async def ping(self) -> bool:
        """True when Redis answers in time; False (not an exception) when it does not."""
        try:
            return bool(await self._call("ping", self._redis.ping()))
        except StateUnavailable:
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, what: str, operation):
        # The socket timeouts bound each read and connect; this bounds the whole call (connect,
        # a retry, a script reload), so a caller never waits much longer than timeout_s.
        try:
            async with asyncio.timeout(self._timeout_s):
                return await operation
        except TimeoutError:
            raise StateUnavailable(
                f"redis did not answer {what} within {self._timeout_s}s") from None
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis unavailable for {what}: {exc}") from exc
