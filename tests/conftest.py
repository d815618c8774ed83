"""Shared fixtures, and the guard that keeps every test on loopback."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures for every test)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise RuntimeError(f"test tried to reach {address!r}: tests may only use loopback")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    socket.socket.connect = _guarded(_real_connect)
    socket.socket.connect_ex = _guarded(_real_connect_ex)
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


# CI installs the embedded model and PostgreSQL, so there a skipped `model` or `postgres` test
# means a missing part, not an optional one: KEEL_TEST_REQUIRE=model,postgres turns it into a
# failure that says why it was skipped.
_REQUIRED = {m.strip() for m in os.environ.get("KEEL_TEST_REQUIRE", "").split(",") if m.strip()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    required = _REQUIRED.intersection(mark.name for mark in item.iter_markers())
    if report.skipped and required and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"a test marked {', '.join(sorted(required))} was skipped, but "
                           f"KEEL_TEST_REQUIRE says this run has it: {reason}")
