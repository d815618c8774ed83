"""`keel serve --workers N`: N server processes on one port, and the parent that looks after them.

The parent checks the config, migrates the store once (so N workers never race to migrate),
makes sure the port is free, then starts N workers. Each worker runs `keel.api.server.run` on
the same host:port with SO_REUSEPORT, and the kernel spreads new connections over them. The
parent forwards SIGINT/SIGTERM to the workers and waits while each flushes its traces, restarts
a worker that dies (with a backoff), and gives up, exiting non-zero, when workers keep failing
before they listen.

Workers are fresh interpreters (`python -m keel.api.workers`), never forks: a process forked
after uvloop or llama.cpp were imported inherits their threads' locks in whatever state they
were in, and multiprocessing's 'spawn' would re-run `python -m keel`'s `__main__` (the CLI) in
each child. The parent hands the validated config to each worker over its stdin (pickled: no
secrets in a file or in argv) and keeps that pipe open: a worker whose parent is gone (even
SIGKILLed) sees end-of-file there and shuts down cleanly instead of serving on as an orphan.
Each worker reports that it listens over a pipe of its own, whose descriptor it gets in argv.

Workers run in their own process group, so a Ctrl-C in the terminal reaches the parent alone,
which forwards it once.

Rate limits, budgets and the key cache live in `runtime.state`: with several workers they hold
across processes only in Redis (`state.redis_url`), so N > 1 is refused without it when auth
or limits are configured (`check_workers`).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from keel.config import KeelConfig
from keel.errors import ConfigError

log = logging.getLogger(__name__)

# How long shutdown waits for a worker to flush its traces before killing it.
GRACE_S = 60.0
# How long a worker may take to listen (the embedded model loads first) before it counts as
# failed to start.
START_TIMEOUT_S = 180.0
# Workers dying before they listen this many times in a row: give up (a broken config, a port
# taken, a provider that cannot start; restarting forever would only hide it).
MAX_START_FAILURES = 3
# A restart waits BACKOFF_S, doubled for each other crash in the last CRASH_WINDOW_S, at most
# MAX_BACKOFF_S: a worker that crashes on every request does not spin.
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CRASH_WINDOW_S = 60.0
TICK_S = 0.1
READY_PREFIX = "Keel listening on "
DOCS = "docs/deployment.md"


def check_workers(config: KeelConfig, workers: int) -> None:
    """Raise ConfigError if `workers` processes cannot serve this config correctly."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if workers == 1:
        return
    if config.server.port == 0:
        raise ConfigError(
            "--port 0 cannot be used with --workers: each worker would listen on a port of its "
            "own; give a port number")
    if config.state.redis_url is None:
        shared = needs_shared_state(config)
        if shared:
            raise ConfigError(
                f"--workers {workers} needs Redis here ({'; '.join(shared)}): without it, rate "
                f"limits and budgets would be counted per process, each worker admitting its own "
                f"share. Set state.redis_url in keel.yaml (state: {{redis_url: "
                f"redis://host:6379/0}}, or ${{KEEL_REDIS_URL}}) so the workers share them, or "
                f"run one worker; see {DOCS}")


def needs_shared_state(config: KeelConfig) -> list[str]:
    """What in `config` must be shared by every process to hold: [] when nothing is."""
    found = []
    if config.auth_settings() is not None:
        found.append("auth is on: per-key budgets and rate limits")
    limited = sorted(name for name, m in config.models.items() if m.limits is not None)
    if limited:
        found.append(f"rate limits on models {', '.join(limited)}")
    if config.limits.teams:
        found.append("limits.teams budgets")
    return found


def supervise(config: KeelConfig, workers: int,
              announce: Callable[[str], None] = print) -> int:
    """Run `workers` server processes until SIGINT or SIGTERM; the exit status for the CLI."""
    check_workers(config, workers)
    _migrate(config)
    _check_port_free(config.server.host, config.server.port)
    metrics_dir = tempfile.mkdtemp(prefix="keel-metrics-")
    _metrics_call("prepare_multiprocess", metrics_dir)
    supervisor = Supervisor(config, workers, announce)
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in signals}
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _migrate(config: KeelConfig) -> None:
    from keel.store import open_store

    open_store(config.database_url()).close()


def _check_port_free(host: str, port: int) -> None:
    """Bind the address once without SO_REUSEPORT: it fails if anything listens there, including
    another Keel's workers, which SO_REUSEPORT would otherwise let ours join silently."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"server.host {host!r}: {exc}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
            try:
                probe.bind(address)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _metrics_call(name: str, *args) -> None:
    # keel.ops.metrics sets up prometheus-client's multiprocess mode; an older module without it
    # serves each worker's own counters.
    from keel.ops import metrics

    function = getattr(metrics, name, None)
    if function is not None:
        function(*args)


@dataclass
class Worker:
    process: subprocess.Popen
    started: float
    ready: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)


@dataclass
class Slot:
    """One of the N places a worker runs in; its worker is replaced when it dies."""

    index: int
    worker: Worker | None = None
    restart_at: float | None = None
    crashes: deque = field(default_factory=deque)


class Supervisor:
    # What starts a worker; the descriptor of its report pipe is appended.
    command = (sys.executable, "-m", "keel.api.workers")

    def __init__(self, config: KeelConfig, workers: int, announce: Callable[[str], None]):
        self.config = config
        self.announce = announce
        self.slots = [Slot(i) for i in range(workers)]
        self.payload = pickle.dumps(config)
        self.stop = threading.Event()
        self.announced = False
        self.start_failures = 0

    def on_signal(self, _signum, _frame) -> None:
        self.stop.set()

    def run(self) -> int:
        for slot in self.slots:
            self._start(slot)
        while not self.stop.wait(TICK_S):
            if not self._tick():
                log.error("workers failed to start %d times in a row; giving up",
                          self.start_failures)
                self._shutdown()
                return 1
        return self._shutdown()

    def _tick(self) -> bool:
        """Look after each slot once; False when it is time to give up."""
        now = time.monotonic()
        for slot in self.slots:
            worker = slot.worker
            if worker is None:
                if slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
                continue
            code = worker.process.poll()
            if code is None:
                if not worker.ready.is_set() and now - worker.started > START_TIMEOUT_S:
                    log.error("worker %d did not listen within %.0f s; killing it",
                              worker.process.pid, START_TIMEOUT_S)
                    worker.process.kill()
                continue
            _metrics_call("worker_exited", worker.process.pid)
            worker.process.stdin.close()
            slot.worker = None
            if worker.ready.is_set():
                self.start_failures = 0
            else:
                self.start_failures += 1
                if self.start_failures >= MAX_START_FAILURES:
                    return False
            delay = self._backoff(slot, now)
            log.warning("worker %d exited (%s)%s; restarting it in %.1f s", worker.process.pid,
                        _describe(code), "" if worker.ready.is_set() else " before listening",
                        delay)
            slot.restart_at = now + delay
        if not self.announced and all(s.worker and s.worker.ready.is_set() for s in self.slots):
            self.announced = True
            self.start_failures = 0
            for line in self.slots[0].worker.lines:
                self.announce(line)
            pids = ", ".join(str(s.worker.process.pid) for s in self.slots)
            self.announce(f"workers: {len(self.slots)} (pids {pids})")
        return True

    def _backoff(self, slot: Slot, now: float) -> float:
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > CRASH_WINDOW_S:
            slot.crashes.popleft()
        return min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (len(slot.crashes) - 1))

    def _start(self, slot: Slot) -> None:
        slot.restart_at = None
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [*self.command, str(write_fd)],
                stdin=subprocess.PIPE, pass_fds=(write_fd,), process_group=0)
        finally:
            os.close(write_fd)
        # Only the pipe's end is kept open: the worker watches it to notice the parent is gone.
        process.stdin.write(struct.pack("!Q", len(self.payload)) + self.payload)
        process.stdin.flush()
        worker = Worker(process, time.monotonic())
        threading.Thread(target=_read_reports, args=(read_fd, worker), daemon=True).start()
        slot.worker = worker
        if self.announced:
            log.info("worker %d started in slot %d", process.pid, slot.index)

    def _shutdown(self) -> int:
        """Stop every worker and wait for it (traces flushed); 0 if all ended on their own."""
        workers = [s.worker for s in self.slots if s.worker is not None]
        for worker in workers:
            if worker.process.poll() is None:
                # SIGTERM whichever signal the parent got: a worker still starting up (no
                # handlers yet) then ends quietly, not with a KeyboardInterrupt traceback.
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        status = 0
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0f s; killing it",
                          worker.process.pid, GRACE_S)
                worker.process.kill()
                worker.process.wait()
                status = 1
            worker.process.stdin.close()
            _metrics_call("worker_exited", worker.process.pid)
        return status


def _read_reports(read_fd: int, worker: Worker) -> None:
    with os.fdopen(read_fd, "r", encoding="utf-8") as reports:
        for line in reports:
            worker.lines.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX):
                worker.ready.set()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def worker_main() -> None:
    """A worker: read the config from stdin, serve with SO_REUSEPORT, report to the parent."""
    report_fd = int(sys.argv[1])
    logging.basicConfig(level=logging.INFO,
                        format="%(levelname)s %(name)s [worker %(process)d]: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The raw descriptor, not sys.stdin: a daemon thread blocked in a buffered read holds the
    # buffer's lock, and the interpreter aborts at exit when it cannot take it.
    stdin = sys.stdin.fileno()
    (size,) = struct.unpack("!Q", _read_exactly(stdin, 8))
    config: KeelConfig = pickle.loads(_read_exactly(stdin, size))
    threading.Thread(target=_stop_when_orphaned, args=(stdin,), daemon=True).start()
    reports = os.fdopen(report_fd, "w", encoding="utf-8", buffering=1)

    def announce(line: str) -> None:
        reports.write(line + "\n")

    from keel.api.server import run

    run(config, announce=announce, reuse_port=True)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            sys.exit("keel worker: the parent closed the config pipe")
        data += chunk
    return data


def _stop_when_orphaned(fd: int) -> None:
    while os.read(fd, 4096):  # b"" at end-of-file: the parent closed the pipe, or is gone
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    worker_main()
