"""`MemoryState`: the shared state kept in this process's memory (one process, no Redis).

Every operation runs on the event loop's thread without awaiting, so it is atomic as it stands.
Counters remember when they expire and are dropped lazily, when next read.
"""

from __future__ import annotations

import time

from keel.state import Add, Bucket, BucketLevel, Debit, Quota, Verdict


class MemoryState:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._counters: dict[str, tuple[float, float]] = {}  # key -> (value, expires at)

    async def admit(self, buckets: list[Bucket], quotas: list[Quota]) -> Verdict:
        now = self._clock()
        levels = [self._level(b.key, b.capacity, b.window_s, now) for b in buckets]
        spent = tuple(self._value(q.key, now) for q in quotas)
        refused = None
        for i, (bucket, tokens) in enumerate(zip(buckets, levels)):
            if tokens < bucket.take or tokens <= 0:
                refused = i
                break
        if refused is None:
            for j, (quota, value) in enumerate(zip(quotas, spent)):
                if value >= quota.limit:
                    refused = len(buckets) + j
                    break
        out = []
        for i, (bucket, tokens) in enumerate(zip(buckets, levels)):
            rate = bucket.capacity / bucket.window_s
            if refused is None:
                tokens -= bucket.take
                self._buckets[bucket.key] = (tokens, now)
            else:
                self._buckets[bucket.key] = (tokens, now)
            need = max(bucket.take, 1e-9) - tokens if i == refused else 0.0
            out.append(BucketLevel(
                remaining=tokens,
                reset_s=max(0.0, (bucket.capacity - tokens) / rate),
                retry_after_s=max(0.0, need / rate),
            ))
        return Verdict(allowed=refused is None, buckets=tuple(out), spent=spent,
                       refused_by=refused)

    async def settle(self, debits: list[Debit], adds: list[Add]) -> None:
        now = self._clock()
        for debit in debits:
            tokens = self._level(debit.key, debit.capacity, debit.window_s, now)
            self._buckets[debit.key] = (tokens - debit.amount, now)
        for add in adds:
            self._counters[add.key] = (self._value(add.key, now) + add.amount,
                                       now + add.expires_s)

    async def seed(self, key: str, value: float, expires_s: float) -> None:
        now = self._clock()
        if key not in self._counters or self._counters[key][1] <= now:
            self._counters[key] = (value, now + expires_s)

    async def get(self, key: str) -> float | None:
        now = self._clock()
        found = self._counters.get(key)
        return found[0] if found is not None and found[1] > now else None

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass

    def _level(self, key: str, capacity: float, window_s: float, now: float) -> float:
        found = self._buckets.get(key)
        if found is None:
            return capacity
        tokens, at = found
        return min(capacity, tokens + (now - at) * capacity / window_s)

    def _value(self, key: str, now: float) -> float:
        found = self._counters.get(key)
        if found is None or found[1] <= now:
            return 0.0
        return found[0]


