"""Start a real `keel serve` process on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def keel_server(
    workdir: Path, config: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """Yield the base URL (…/v1) of a `keel serve` running in `workdir` with `config` (YAML)."""
    args = [sys.executable, "-m", "keel", "serve", "--port", "0"]
    if config is not None:
        (workdir / "keel.yaml").write_text(config)
        args += ["--config", "keel.yaml"]
    process = subprocess.Popen(
        args,
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base_url = _wait_for_listening(process, timeout)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def alive(pid: int) -> bool:
    """Whether a process with this id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_listening(process: subprocess.Popen, timeout: float) -> str:
    # A thread keeps draining the server's output for its whole life: a blocking readline here
    # would ignore the deadline, and an unread pipe that fills up would block the server.
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_drain, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            process.wait(timeout=10)
            raise RuntimeError(f"keel serve exited ({process.returncode}):\n" + "".join(seen))
        seen.append(line)
        if line.startswith("Keel listening on "):
            return line.split()[-1].strip()
    raise RuntimeError("keel serve did not start in time:\n" + "".join(seen))


def _drain(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def wait_for_trace(base_dir: Path, trace_id: str, timeout: float = 10) -> dict:
    """Poll `keel traces show ID --json` until the recorder has written the trace."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [sys.executable, "-m", "keel", "traces", "show", trace_id, "--json"],
            cwd=base_dir, capture_output=True, text=True,
        )
        if result.returncode == 0:
            return json.loads(result.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} not recorded: {result.stderr}")
        time.sleep(0.2)


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None):
    """A raw HTTP call (for malformed bodies and error statuses): (status, headers, JSON)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    request = urllib.request.Request(url, data=body, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")
