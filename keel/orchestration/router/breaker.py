"""A circuit breaker per deployment: takes a failing deployment out, then probes it back.

    closed ──(`failures` failures within `window_s`)──> open
    open ──(`cooldown_s` later, the next request is let through as the probe)──> half_open
    half_open ──(the probe succeeds)──> closed      half_open ──(the probe fails)──> open

Only failures the upstream is to blame for count (429, 5xx, timeouts, broken connections); a
client's mistake (400) says nothing about the deployment. While half-open exactly one request
is in flight as the probe; the others skip the deployment as if it were open.

The state is in-process: each `keel serve` process learns on its own that a deployment is down,
which costs at most `failures` requests per process. Hand-written rather than pybreaker or
aiobreaker: those wrap a call (ours is a stream whose first chunk decides) and keep their own
state machine without the per-transition hook the metrics need; this is forty lines.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("keel.router")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(
        self,
        name: str,
        failures: int,
        window_s: float,
        cooldown_s: float,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failures = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.state = CLOSED
        self._on_change = on_change
        self._clock = clock
        self._recent: deque[float] = deque()
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a request go to this deployment now? (True makes it the probe when half-open.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self._opened_at < self.cooldown_s:
                return False
            self._move(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def available(self) -> bool:
        """Would `allow()` let a request through (without taking the probe's place)?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self._clock() - self._opened_at >= self.cooldown_s
        return not self._probing

    def success(self) -> None:
        self._probing = False
        if self.state != CLOSED:
            self._recent.clear()
            self._move(CLOSED)

    def failure(self) -> None:
        self._probing = False
        now = self._clock()
        if self.state == HALF_OPEN:
            self._open(now)
            return
        if self.state == OPEN:
            return
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now)

    def release(self) -> None:
        """The request let through ended saying nothing about the deployment (a client error,
        a cancelled call): a probe's place is free again."""
        self._probing = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._recent.clear()
        self._move(OPEN)

    def _move(self, to: str) -> None:
        was, self.state = self.state, to
        log.warning("router: deployment %s circuit %s -> %s", self.name, was, to)
        if self._on_change is not None:
            self._on_change(self.name, to)
