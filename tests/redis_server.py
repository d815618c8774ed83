"""A real `redis-server` (Debian's package) for the tests that share state through Redis.

`running_redis(directory)` starts one on a free loopback port with persistence off, waits until
it answers PING and stops it at the end. What it yields has `.url`, `.stop()` and `.start()`
(the same port again, empty: an outage and a recovery), and `.pause()` / `.resume()` (SIGSTOP /
SIGCONT: a server that accepts connections but does not answer, i.e. a slow one).

Fixtures, visible to every test directory through tests/conftest.py:
- `redis_server`: the running server, one per test (it starts in a few milliseconds);
- `redis_url`: its URL.

Mark the tests that use them `@pytest.mark.redis` (so `-m "not redis"` leaves them out); the
fixture marks its test too, so that when redis-server is missing, its skip turns into a failure
under KEEL_TEST_REQUIRE=redis (CI) even for a test that forgot the mark.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MISSING = ("redis-server is not installed (Debian: apt-get install redis-server; .ci/run "
           "installs it)")


def available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.log = self.directory / "redis.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        if self._process is not None:
            raise RuntimeError("redis-server is already running")
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                   "--daemonize", "no", "--logfile", ""]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def pause(self) -> None:
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(request, tmp_path_factory) -> Iterator[RedisServer]:
    request.node.add_marker(pytest.mark.redis)
    if not available():
        pytest.skip(MISSING)
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url
