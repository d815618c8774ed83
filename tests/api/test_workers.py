"""`keel serve --workers N`: real processes on one port, their shutdown, restarts and refusals."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel.api import workers
from keel.api.workers import Supervisor, check_workers
from keel.config import BudgetConfig, LimitsConfig, RateLimitConfig, StateConfig
from keel.errors import ConfigError
from tests.api.conftest import fake_config
from tests.servers import alive, http

CONFIG = """
state_dir: {state}
providers:
  fake: {{kind: fake}}
models:
  fake/echo: {{provider: fake, model: echo}}
"""
CHAT = {"model": "fake/echo", "messages": [{"role": "user", "content": "hello"}]}
# Generous: three interpreters start on a busy 2-core runner.
START_TIMEOUT_S = 120
SEEN_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_args(workdir: Path, *extra: str, more_config: str = "") -> list[str]:
    (workdir / "keel.yaml").write_text(CONFIG.format(state=workdir / "state") + more_config)
    return [sys.executable, "-m", "keel", "serve", "--config", "keel.yaml", *extra]


class Output:
    """What a process writes, read by a thread for its whole life (an unread pipe that fills up
    would block it)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._drain, args=(process.stdout,), daemon=True)
        self.thread.start()

    def _drain(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def base_url(self, process: subprocess.Popen, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("Keel listening on "):
                    return line.split()[-1]
            if process.poll() is not None:
                self.thread.join(5)
                raise RuntimeError(f"keel serve exited ({process.returncode}):\n{self.text()}")
            time.sleep(0.1)
        raise RuntimeError(f"keel serve did not start in time:\n{self.text()}")


@contextmanager
def keel_workers(workdir: Path, n: int = 2, more_config: str = "", env: dict | None = None,
                 ) -> Iterator[tuple[subprocess.Popen, str, Output]]:
    """(the parent process, its base URL, its output) of `keel serve --workers n`."""
    process = subprocess.Popen(
        serve_args(workdir, "--workers", str(n), "--port", str(free_port()),
                   more_config=more_config),
        cwd=workdir, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(process)
    try:
        yield process, output.base_url(process, START_TIMEOUT_S), output
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def readyz_pid(base_url: str) -> int:
    # urllib opens a new connection each time, so the kernel picks a worker each time.
    status, _, body = http("GET", base_url.removesuffix("/v1") + "/readyz")
    assert status == 200, body
    return body["pid"]


def pids_until(base_url: str, done, timeout: float = SEEN_TIMEOUT_S) -> set[int]:
    """Poll /readyz until `done(pids seen)`; the pids seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not done(seen):
        assert time.monotonic() < deadline, f"only saw workers {seen}"
        try:
            seen.add(readyz_pid(base_url))
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)  # a connection that reached a worker as it was killed
    return seen


def requests_counted(base_url: str) -> float:
    url = base_url.removesuffix("/v1") + "/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "keel_requests" for sample in family.samples
               if sample.name == "keel_requests_total")


def count_traces(workdir: Path) -> int:
    with sqlite3.connect(workdir / "state" / "keel.db") as db:
        return db.execute("SELECT count(*) FROM traces").fetchone()[0]


def test_two_workers_share_the_port_and_flush_their_traces_on_sigterm(tmp_path):
    with keel_workers(tmp_path) as (parent, base_url, out):
        pids = pids_until(base_url, lambda seen: len(seen) >= 2)
        assert len(pids) == 2 and parent.pid not in pids
        for _ in range(40):
            status, _, body = http("POST", base_url + "/chat/completions", CHAT)
            assert status == 200, body
        # Whichever worker answers the scrape counts every worker's requests.
        for _ in range(6):
            assert requests_counted(base_url) == 40
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=90) == 0
        out.thread.join(10)
        output = out.text()
    assert "workers: 2" in output
    assert "Traceback" not in output, output
    assert not any(alive(pid) for pid in pids)
    # Each worker flushed what it had written before it exited.
    assert count_traces(tmp_path) == 40


def test_a_killed_worker_is_restarted_and_the_server_keeps_answering(tmp_path):
    with keel_workers(tmp_path) as (parent, base_url, out):
        first = pids_until(base_url, lambda seen: len(seen) >= 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # The replacement answers beside the survivor; the victim never again.
        survivor = first - {victim}
        after = pids_until(base_url, lambda seen: bool(seen - first) and survivor <= seen)
        assert victim not in after
        assert len(after) == 2
        for _ in range(10):
            status, _, body = http("POST", base_url + "/chat/completions", CHAT)
            assert status == 200, body
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=90) == 0
        out.thread.join(10)
        output = out.text()
    assert f"worker {victim} exited (signal SIGKILL); restarting it" in output


@pytest.mark.redis
def test_workers_with_auth_share_a_rate_limit_through_redis(tmp_path, redis_url):
    admin = "sk-admin-workers-test"
    more = f'state: {{redis_url: "{redis_url}"}}\n'
    with keel_workers(tmp_path, more_config=more, env={"KEEL_ADMIN_KEY": admin}) as (
            parent, base_url, _):
        assert len(pids_until(base_url, lambda seen: len(seen) >= 2)) == 2
        status, _, body = http("POST", base_url + "/keys", {"name": "t", "rpm": 5},
                               headers={"Authorization": f"Bearer {admin}"})
        assert status == 201, body
        key = {"Authorization": f"Bearer {body['secret']}"}
        assert http("POST", base_url + "/chat/completions", CHAT)[0] == 401
        # New connections, spread over both workers: 5 a minute in all, not 5 per worker.
        statuses = [http("POST", base_url + "/chat/completions", CHAT, headers=key)[0]
                    for _ in range(14)]
        assert statuses.count(200) == 5 and statuses.count(429) == 9, statuses
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=90) == 0


def run_serve(workdir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(serve_args(workdir, *extra), cwd=workdir, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, check=False)


def test_workers_with_auth_and_no_redis_are_refused(tmp_path):
    result = run_serve(tmp_path, "--workers", "2", "--port", str(free_port()),
                       env={"KEEL_ADMIN_KEY": "sk-admin-test"})
    assert result.returncode == 2
    assert "state.redis_url" in result.stderr and "per process" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "keel.db").exists()  # refused before migrating


def test_port_zero_with_workers_is_refused(tmp_path):
    result = run_serve(tmp_path, "--workers", "2", "--port", "0")
    assert result.returncode == 2
    assert "--port 0" in result.stderr and "Traceback" not in result.stderr


def test_a_port_already_taken_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(tmp_path, "--workers", "2", "--port", str(port))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("overrides", [
    {"limits": LimitsConfig(teams={"search": BudgetConfig(budget_usd=10)})},
    {"models_limits": RateLimitConfig(rpm=5)},
])
def test_limits_without_redis_need_one_worker(tmp_path, monkeypatch, overrides):
    monkeypatch.delenv("KEEL_ADMIN_KEY", raising=False)
    model_limits = overrides.pop("models_limits", None)
    config = fake_config(tmp_path, **overrides)
    if model_limits is not None:
        config.models["fake/echo"].limits = model_limits
    config.server.port = 8080
    check_workers(config, 1)  # one process: its own memory is the shared state
    with pytest.raises(ConfigError, match="state.redis_url"):
        check_workers(config, 2)
    config.state = StateConfig(redis_url="redis://127.0.0.1:6379/0")
    check_workers(config, 2)


def test_no_auth_and_no_limits_need_no_redis(tmp_path, monkeypatch):
    monkeypatch.delenv("KEEL_ADMIN_KEY", raising=False)
    config = fake_config(tmp_path)
    config.server.port = 8080
    check_workers(config, 4)


def test_workers_that_keep_failing_to_start_make_the_parent_give_up(tmp_path, monkeypatch, caplog):
    # A real process that dies at once, in place of a worker.
    monkeypatch.setattr(Supervisor, "command", (sys.executable, "-c", "raise SystemExit(3)"))
    monkeypatch.setattr(workers, "BACKOFF_S", 0.05)
    announced: list[str] = []
    supervisor = Supervisor(fake_config(tmp_path), 2, announced.append)
    assert supervisor.run() == 1
    assert announced == []
    assert "failed to start 3 times in a row; giving up" in caplog.text
    assert "exited (status 3) before listening" in caplog.text
