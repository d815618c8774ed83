"""The deployments behind one public model, and the order in which a request tries them.

A deployment is one provider (keel.yaml `providers:`) serving one upstream model. `order()`
returns every deployment, best first, so that the rest are the fallbacks:

- `weighted`: weighted random sampling without replacement (each position is drawn among the
  deployments not yet placed, with probability proportional to `weight`), so over many
  requests the share of first tries follows the weights;
- `least_busy`: fewest requests in flight in this process first (streams count until they end); ties broken by weight, as above.

Per-deployment `rpm` and `tpm` are token buckets in the shared state (`runtime.state`, memory or
Redis, as keel/ops/limits.py uses), so several replicas share a deployment's limits: `admit()`
takes one request from the rpm bucket and checks the tpm bucket is not empty; `settle()` debits
the tokens the answer used. A deployment over its limits is skipped, not counted as failing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel.state import Bucket, Debit, StateUnavailable

log = logging.getLogger("keel.router")

WINDOW_S = 60.0


@dataclass(eq=False)
class Deployment:
    name: str  # "provider/model", the label on metrics, spans and logs
    provider_name: str
    provider: Any  # keel.providers.Provider
    model: str
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    group: str | None = None  # learned routing: "strong" or "cheap"

    def buckets(self) -> list[Bucket]:
        found = []
        if self.rpm is not None:
            found.append(Bucket(f"rl:deployment:{self.name}:rpm", self.rpm, WINDOW_S, 1.0))
        if self.tpm is not None:
            found.append(Bucket(f"rl:deployment:{self.name}:tpm", self.tpm, WINDOW_S, 0.0))
        return found


def order(deployments: list[Deployment], strategy: str, rng: random.Random,
          busy: Callable[[Deployment], int] | None = None) -> list[Deployment]:
    """Every deployment, in the order to try them; `busy` counts a deployment's requests in
    flight (least_busy)."""
    shuffled = _weighted_shuffle(deployments, rng)
    if strategy == "least_busy" and busy is not None:
        # sorted() is stable: equally busy deployments keep their weighted random order.
        return sorted(shuffled, key=busy)
    return shuffled


def _weighted_shuffle(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    # Efraimidis–Spirakis: sort by u ** (1 / w), u uniform in (0, 1]; the same distribution as
    # drawing one by one in proportion to the weights, in one pass.
    if len(deployments) < 2:
        return list(deployments)
    keys = {id(d): (1.0 - rng.random()) ** (1.0 / d.weight) for d in deployments}
    return sorted(deployments, key=lambda d: keys[id(d)], reverse=True)


async def admit(state, deployment: Deployment) -> bool:
    """Whether the deployment's own rpm/tpm admit one more request (True when it has none, or
    when the shared state cannot be reached: the upstream's own 429 still protects it)."""
    buckets = deployment.buckets()
    if not buckets:
        return True
    try:
        verdict = await state.admit(buckets, [])
    except StateUnavailable as exc:
        log.warning("router: shared state unreachable (%s); deployment %s admitted without "
                    "its limits", exc, deployment.name)
        return True
    return verdict.allowed


async def settle(state, deployment: Deployment, usage: dict | None) -> None:
    """Debit the tokens an answer used from the deployment's tpm bucket."""
    if deployment.tpm is None or not usage:
        return
    tokens = usage.get("total_tokens") or (
        (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
    if not tokens:
        return
    try:
        await state.settle([Debit(f"rl:deployment:{deployment.name}:tpm", deployment.tpm,
                                  WINDOW_S, tokens)], [])
    except StateUnavailable as exc:
        log.warning("router: tokens of deployment %s not counted (%s)", deployment.name, exc)
