"""The conftest guard: a test may connect to loopback, never elsewhere."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import _guarded, _is_loopback


def test_loopback_addresses_are_allowed():
    for address in [("127.0.0.1", 80), ("127.3.4.5", 1), ("::1", 80, 0, 0), ("localhost", 80),
                    "/tmp/keel.sock"]:
        assert _is_loopback(address)


def test_other_addresses_are_refused_before_any_packet_is_sent():
    attempts = []
    connect = _guarded(lambda sock, address: attempts.append(address))
    with socket.socket() as sock:
        for address in [("10.0.0.1", 80), ("192.168.1.1", 80), ("8.8.8.8", 53),
                        ("api.openai.com", 443)]:
            with pytest.raises(RuntimeError, match="only use loopback"):
                connect(sock, address)
        connect(sock, ("127.0.0.1", 9))
    assert attempts == [("127.0.0.1", 9)]


def test_the_guard_is_installed():
    assert socket.socket.connect is not _guarded.__globals__["_real_connect"]
