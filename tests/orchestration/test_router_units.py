"""The router's parts without sockets: the circuit breaker's states, the deployments' order, and
the configuration a router model accepts or refuses."""

from __future__ import annotations

import random

import pytest

from keel.config import KeelConfig
from keel.errors import ConfigError
from keel.gateway import Gateway
from keel.orchestration.router.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from keel.orchestration.router.deployments import Deployment, order


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock, moves):
    return Breaker("p/m", failures=3, window_s=10, cooldown_s=5,
                   on_change=lambda name, to: moves.append((name, to)), clock=clock)


def test_breaker_opens_after_failures_within_the_window():
    clock, moves = Clock(), []
    breaker = _breaker(clock, moves)
    breaker.failure()
    clock.now += 11  # the first failure leaves the window
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow() and not breaker.available()
    assert moves == [("p/m", OPEN)]


def test_breaker_half_open_lets_one_probe_then_closes_or_reopens():
    clock, moves = Clock(), []
    breaker = _breaker(clock, moves)
    for _ in range(3):
        breaker.failure()
    clock.now += 5
    assert breaker.available()
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.failure()  # the probe failed
    assert breaker.state == OPEN and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.release()  # a client error: the probe's place is free again, still half-open
    assert breaker.state == HALF_OPEN and breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()
    assert [to for _, to in moves] == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def _deployments(*weights):
    return [Deployment(f"p{i}/m", f"p{i}", None, "m", weight=w) for i, w in enumerate(weights)]


def test_weighted_order_follows_the_weights():
    deployments = _deployments(3, 1)
    rng = random.Random(7)
    firsts = [order(deployments, "weighted", rng)[0].name for _ in range(4000)]
    share = firsts.count("p0/m") / len(firsts)
    assert 0.70 < share < 0.80, share
    # every deployment is always in the order: the rest are the fallbacks
    assert all(len(order(deployments, "weighted", rng)) == 2 for _ in range(10))


def test_least_busy_puts_the_idle_deployment_first():
    deployments = _deployments(100, 1)
    busy = {"p0/m": 3, "p1/m": 0}
    for _ in range(50):
        ranked = order(deployments, "least_busy", random.Random(), lambda d: busy[d.name])
        assert [d.name for d in ranked] == ["p1/m", "p0/m"]


def _config(models: dict) -> dict:
    return {"providers": {"east": {"kind": "fake"}, "west": {"kind": "fake"}}, "models": models}


def test_a_router_model_may_omit_its_provider():
    config = KeelConfig.model_validate(_config({"chat": {"router": {"deployments": [
        {"provider": "west", "model": "echo"}, {"provider": "east", "model": "echo"}]}}}))
    assert config.models["chat"].provider == "west"
    assert config.models["chat"].model == "echo"


def test_a_model_without_provider_or_router_is_refused():
    with pytest.raises(ValueError, match="models.chat.provider: required"):
        KeelConfig.model_validate(_config({"chat": {"model": "echo"}}))


def test_a_deployment_on_an_unknown_provider_is_refused():
    with pytest.raises(ValueError, match=r"router.deployments\[1\].provider: unknown provider "
                                         r"'north'"):
        KeelConfig.model_validate(_config({"chat": {"router": {"deployments": [
            {"provider": "east", "model": "echo"}, {"provider": "north", "model": "echo"}]}}}))


def test_an_unknown_fallback_model_is_refused(tmp_path):
    config = KeelConfig.model_validate({**_config({"chat": {"router": {
        "deployments": [{"provider": "east", "model": "echo"}], "fallbacks": ["nope"]}}}),
        "state_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        Gateway(config)


def test_learned_routing_needs_a_strong_and_a_cheap_group(tmp_path):
    config = KeelConfig.model_validate({**_config({"chat": {"router": {
        "deployments": [{"provider": "east", "model": "echo", "group": "strong"}],
        "learned": {"strong": "strong", "cheap": "small"}}}}), "state_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="learned.cheap: no deployment has `group: small`"):
        Gateway(config)
