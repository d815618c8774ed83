"""Rate limits and budgets: checked before each model call, settled when its trace finishes.

`Limiter.admit` gathers every limit that applies to one request into a single
`SharedState.admit` call (one Redis round trip, all or nothing):

- the key's requests per minute (take 1) and tokens per minute (take 0: refused only once the
  bucket is empty, since a request's tokens are known only after it);
- the model's own `models.X.limits` on this deployment, all callers together;
- the key's budget (`budget_usd` per UTC day or month) and its team's (`limits.teams`), as
  quotas on spend counters named by period (`spend:key:<id>:2026-12`).

`Limiter.settle` (a trace sink) then debits the token buckets by the tokens the call used and
adds its cost to the spend counters, in one `SharedState.settle` task. `start()` seeds this
period's spend counters from the store's `usage_daily`, so a restart does not forget the spend.

A request to which no limit applies (the anonymous caller of an auth-less server, a key without
limits on a model without limits) never touches the state.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from dataclasses import dataclass

from keel.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from keel.state import Add, Bucket, Debit, Quota, StateUnavailable

log = logging.getLogger(__name__)

WINDOW_S = 60.0
DAY_S = 86400.0
# How long aclose() waits for settlements still in flight (a Redis that is away must not hold
# up shutdown).
CLOSE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class _Check:
    """What a bucket means, to word its refusal and pick the headers."""

    family: str  # "requests" | "tokens"
    scope: str  # "key team-a" | "model gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class Admission:
    """What settling a request needs (kept on `trace.admission`)."""

    token_buckets: tuple[tuple[str, float], ...]  # (bucket key, capacity per minute)
    counters: tuple[str, ...]  # spend counters
    period_end: float  # epoch seconds when the longest counted period ends


class Limiter:
    def __init__(self, config, runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.teams = dict(config.limits.teams)
        self.fail_open = config.state.on_error == "open"
        self._tasks: set[asyncio.Task] = set()
        self._outage = False  # a warning once per outage, not once per request
        self._errors_metric = None

    # -- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Seed this period's spend counters (day and month, per key and per team) from the
        store, set-if-absent, so a restart or a fresh Redis remembers what was spent."""
        if not self.config.tracing.enabled:  # nothing writes usage_daily: nothing to read back
            return
        from keel.ops.usage import spend_this_period

        now = time.time()
        try:
            spend = await asyncio.to_thread(spend_this_period, self.runtime.store, now)
        except Exception:
            log.exception("reading this period's spend from the store failed; budgets start "
                          "from what the shared state holds")
            return
        state = self.runtime.state
        try:
            for (scope, name, period), value in spend.items():
                label, end = period_of(period, now)
                await state.seed(f"spend:{scope}:{name}:{label}", value, end - now + DAY_S)
        except StateUnavailable as exc:
            log.warning("shared state unreachable at start-up (%s): spend counters not seeded",
                        exc)

    # -- before the call ---------------------------------------------------------------------

    async def admit(self, principal, trace, model: str, limits) -> dict[str, str]:
        key_rpm, key_tpm, budget = principal.rpm, principal.tpm, principal.budget_usd
        team = self.teams.get(principal.team) if self.teams and principal.metadata else None
        model_rpm = limits.rpm if limits is not None else None
        model_tpm = limits.tpm if limits is not None else None
        if (key_rpm is None and key_tpm is None and budget is None and team is None
                and model_rpm is None and model_tpm is None):
            return {}  # the default path: nothing to count

        buckets: list[Bucket] = []
        checks: list[_Check] = []
        token_buckets: list[tuple[str, float]] = []
        key_scope = f"key {principal.name}"
        if key_rpm is not None:
            buckets.append(Bucket(f"rl:key:{principal.key_id}:rpm", key_rpm, WINDOW_S, 1.0))
            checks.append(_Check("requests", key_scope))
        if key_tpm is not None:
            bucket = f"rl:key:{principal.key_id}:tpm"
            buckets.append(Bucket(bucket, key_tpm, WINDOW_S, 0.0))
            checks.append(_Check("tokens", key_scope))
            token_buckets.append((bucket, float(key_tpm)))
        if model_rpm is not None:
            buckets.append(Bucket(f"rl:model:{model}:rpm", model_rpm, WINDOW_S, 1.0))
            checks.append(_Check("requests", f"model {model}"))
        if model_tpm is not None:
            bucket = f"rl:model:{model}:tpm"
            buckets.append(Bucket(bucket, model_tpm, WINDOW_S, 0.0))
            checks.append(_Check("tokens", f"model {model}"))
            token_buckets.append((bucket, float(model_tpm)))

        quotas: list[Quota] = []
        budgets: list[tuple[str, str, float, str]] = []  # (whose, period label, budget, period)
        period_end = 0.0
        now = time.time()
        if budget is not None:
            period = principal.period or "month"
            label, end = period_of(period, now)
            quotas.append(Quota(f"spend:key:{principal.key_id}:{label}", budget))
            budgets.append((key_scope, label, budget, period))
            period_end = max(period_end, end)
        if team is not None:
            label, end = period_of(team.period, now)
            quotas.append(Quota(f"spend:team:{principal.team}:{label}", team.budget_usd))
            budgets.append((f"team {principal.team}", label, team.budget_usd, team.period))
            period_end = max(period_end, end)

        trace.admission = Admission(tuple(token_buckets), tuple(q.key for q in quotas),
                                    period_end)
        try:
            verdict = await self.runtime.state.admit(buckets, quotas)
        except StateUnavailable as exc:
            self._state_failed("admit", exc)
            if self.fail_open:
                return {}
            trace.admission = None
            raise ServiceUnavailable(
                "Rate limits and budgets cannot be checked right now (the shared state is "
                "unreachable); please retry shortly.", headers={"Retry-After": "1"}) from None
        if self._outage:
            self._outage = False
            log.warning("shared state reachable again: rate limits and budgets apply")

        headers = _headers(buckets, checks, verdict.buckets)
        if verdict.allowed:
            return headers
        trace.admission = None  # refused: nothing to settle
        refused = verdict.refused_by
        if refused is not None and refused < len(buckets):
            bucket, check, level = buckets[refused], checks[refused], verdict.buckets[refused]
            retry = max(1, math.ceil(level.retry_after_s))
            unit = "requests per minute (rpm)" if check.family == "requests" \
                else "tokens per minute (tpm)"
            used = max(0.0, bucket.capacity - level.remaining)
            requested = f", Requested {bucket.take:g}" if bucket.take else ""
            raise RateLimited(
                f"Rate limit reached for {unit} on {check.scope}: Limit {bucket.capacity:g}, "
                f"Used {used:.0f}{requested}. Please try again in "
                f"{_duration(level.retry_after_s)}.",
                limit_type=check.family, headers={**headers, "Retry-After": str(retry)})
        index = (refused or len(buckets)) - len(buckets)
        whose, label, limit, period = budgets[index]
        spent = verdict.spent[index]
        raise QuotaExceeded(
            f"You exceeded your current quota on {whose}: ${spent:.4f} spent of its "
            f"${limit:g} budget for the {period} {label} (UTC). Requests are refused until the "
            f"period ends or an admin raises the budget.", headers=headers)

    # -- after the call ----------------------------------------------------------------------

    def settle(self, trace) -> None:
        """Debit what the finished request used (a trace sink: never blocks, never raises)."""
        admission = trace.admission
        if admission is None:
            return
        tokens = trace.total_tokens
        if tokens is None:
            tokens = (trace.prompt_tokens or 0) + (trace.completion_tokens or 0)
        cost = trace.cost_usd or 0.0
        debits = [Debit(key, capacity, WINDOW_S, tokens)
                  for key, capacity in admission.token_buckets] if tokens > 0 else []
        adds = []
        if cost > 0 and admission.counters:
            expires_s = max(0.0, admission.period_end - time.time()) + DAY_S
            adds = [Add(key, cost, expires_s) for key in admission.counters]
        if not debits and not adds:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._settle(debits, adds))
        except RuntimeError:  # no event loop here (a library caller on a thread): not counted
            log.warning("trace %s settled off the event loop; its usage is not counted against "
                        "its limits", trace.id)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, debits: list[Debit], adds: list[Add]) -> None:
        try:
            await self.runtime.state.settle(debits, adds)
        except StateUnavailable as exc:
            self._state_failed("settle", exc)
        except Exception:
            log.exception("settling a request's usage failed")

    async def aclose(self) -> None:
        """Wait (a little) for the settlements still in flight."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT_S)

    # -- the shared state away ---------------------------------------------------------------

    def _state_failed(self, operation: str, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            if operation == "admit":
                what = "admitting requests without limits" if self.fail_open \
                    else "refusing requests (state.on_error: closed)"
            else:
                what = "usage not counted"
            log.warning("shared state unreachable (%s): %s until it answers again", exc, what)
        counter = self._errors_counter()
        if counter is not None:
            try:
                counter.labels(operation=operation).inc()
            except Exception:  # metrics must never fail a request
                log.debug("counting a shared-state error failed", exc_info=True)

    def _errors_counter(self):
        if self._errors_metric is None:
            metrics = self.runtime.metrics
            if not hasattr(metrics, "counter"):
                return None
            try:
                self._errors_metric = metrics.counter(
                    "keel_state_errors_total",
                    "Calls to the shared state (Redis) that failed, by operation",
                    ["operation"])
            except Exception:
                log.exception("registering keel_state_errors_total failed")
                return None
        return self._errors_metric


def period_of(period: str, now: float) -> tuple[str, float]:
    """The UTC period containing `now`: its label (2026-12-01 or 2026-12) and when it ends."""
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + DAY_S
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return time.strftime("%Y-%m", t), float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _headers(buckets, checks, levels) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, for the tightest requests bucket and tokens bucket."""
    tightest: dict[str, tuple] = {}
    for bucket, check, level in zip(buckets, checks, levels):
        left = level.remaining / bucket.capacity
        best = tightest.get(check.family)
        if best is None or left < best[0]:
            tightest[check.family] = (left, bucket, level)
    headers = {}
    for family, (_, bucket, level) in tightest.items():
        headers[f"x-ratelimit-limit-{family}"] = str(int(bucket.capacity))
        headers[f"x-ratelimit-remaining-{family}"] = str(max(0, math.floor(level.remaining)))
        headers[f"x-ratelimit-reset-{family}"] = _duration(level.reset_s)
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format: 120ms, 1.2s, 6m0s, 1h2m3s."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else ("1ms" if seconds > 0 else "0s")
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0") + "s" if frac else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
