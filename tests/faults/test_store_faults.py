"""Store faults: the database goes away mid-run and comes back.

Requests keep being answered while it is away; their traces wait in the recorder's buffer, and
/readyz says so (`store`: reachable, pending, last error); when the store is back, every trace
is written. SQLite: another connection holds an exclusive lock. PostgreSQL: a private,
throw-away server (initdb in a temporary directory, a free loopback port) is stopped with
`pg_ctl stop -m immediate` and started again — the shared CI cluster is never touched.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig
from keel.gateway import Gateway
from keel.store import open_store

# Generous: a request must not wait for the store at all, but the CI runner is a busy box.
PROMPT_S = 15
OUTAGE_WAIT_S = 60


def _config(tmp_path: Path, db_url: str) -> KeelConfig:
    return KeelConfig.model_validate({
        "state_dir": str(tmp_path),
        "store": {"url": db_url},
        "tracing": {"flush_interval_s": 0.05},
        "providers": {"fake": {"kind": "fake"}},
        "models": {"echo": {"provider": "fake", "model": "echo"}},
    })


class Keel:
    """An in-process Keel on a loopback socket, with a client for it."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.gateway = Gateway(_config(tmp_path, db_url))
        self.server = TestServer(create_app(self.gateway), host="127.0.0.1")
        self.session: ClientSession | None = None

    async def __aenter__(self) -> Keel:
        await self.server.start_server()
        self.base = str(self.server.make_url("")).rstrip("/")
        self.session = ClientSession(timeout=ClientTimeout(total=PROMPT_S))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()
        await self.server.close()

    async def chat(self, text: str, stream: bool = False) -> str:
        body = {"model": "echo", "stream": stream,
                "messages": [{"role": "user", "content": text}]}
        async with self.session.post(self.base + "/v1/chat/completions", json=body) as response:
            await response.read()
            assert response.status == 200, await response.text()
            return response.headers["x-keel-trace-id"]

    async def store_status(self) -> dict:
        async with self.session.get(self.base + "/readyz") as response:
            assert response.status == 200
            return (await response.json())["store"]

    async def wait_for(self, predicate, what: str) -> dict:
        deadline = time.monotonic() + OUTAGE_WAIT_S
        while True:
            status = await self.store_status()
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"never {what}: {status}"
            await asyncio.sleep(0.1)


def _stored_ids(db_url: str, ids: list[str]) -> set[str]:
    store = open_store(db_url, migrate=False)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id FROM traces")).scalars()
            return set(rows) & set(ids)
    finally:
        store.close()


async def _outage(keel: Keel, caplog, stop, start) -> list[str]:
    """Requests before, during and after an outage; returns their trace ids."""
    ids = [await keel.chat(f"before {i}") for i in range(3)]
    await keel.wait_for(lambda s: s["written"] >= 3, "wrote the first traces")
    await asyncio.to_thread(stop)
    # Served promptly while the store is away (each within the client's timeout), streams too.
    for i in range(12):
        ids.append(await keel.chat(f"during {i}", stream=bool(i % 2)))
    down = await keel.wait_for(lambda s: not s["store_reachable"], "saw the store go away")
    assert down["pending"] >= 1 and down["last_error"], down
    ids += [await keel.chat(f"still down {i}") for i in range(3)]
    await asyncio.to_thread(start)
    up = await keel.wait_for(lambda s: s["store_reachable"] and s["pending"] == 0,
                             "wrote the waiting traces")
    ids.append(await keel.chat("after"))
    await keel.wait_for(lambda s: s["pending"] == 0 and s["written"] >= len(ids), "caught up")
    assert up["dropped"] == 0 and up["errors"] == 0, up
    outage_warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                       and "trace store unreachable" in r.getMessage()]
    assert len(outage_warnings) == 1, [r.getMessage() for r in caplog.records]
    return ids


async def test_sqlite_locked_by_another_connection(tmp_path, caplog):
    db_file = tmp_path / "state" / "keel.db"
    db_url = f"sqlite:///{db_file}"
    lock: sqlite3.Connection | None = None

    def stop() -> None:
        nonlocal lock
        lock = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")

    def start() -> None:
        lock.execute("COMMIT")
        lock.close()

    with caplog.at_level(logging.INFO, logger="keel.ops.traces"):
        async with Keel(tmp_path, db_url) as keel:
            ids = await _outage(keel, caplog, stop, start)
            assert "locked" in (await keel.store_status())["last_error"]
    assert _stored_ids(db_url, ids) == set(ids)


# -- a private PostgreSQL ------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    if not path:  # CI installs PostgreSQL: missing binaries are a failure, not a skip
        pytest.fail(f"PostgreSQL's {name} not found (under /usr/lib/postgresql/*/bin or PATH)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """initdb + pg_ctl in a temporary directory; as `postgres` when we are root (initdb
    refuses root)."""

    def __init__(self, tmp_path: Path) -> None:
        self.as_root = os.geteuid() == 0
        if self.as_root:  # pytest's tmp_path is private to root; postgres needs its own dir
            self.base = Path(tempfile.mkdtemp(prefix="keel-pg-"))
            shutil.chown(self.base, "postgres", "postgres")
        else:
            self.base = tmp_path / "pg"
            self.base.mkdir()
        self.data = self.base / "data"
        self.port = _free_port()
        self.url = f"postgresql://keel@127.0.0.1:{self.port}/postgres"
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "keel", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       "unix_socket_directories = ''\nfsync = off\n")

    def _run(self, *args: str) -> None:
        # runuser lives in /usr/sbin, which a CI runner's PATH may leave out.
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        command = [runuser, "-u", "postgres", "--", *args] if self.as_root else list(args)
        # Output to a file, never a pipe: the server inherits it and would hold a pipe open.
        with open(self.base / "commands.log", "ab") as log:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=120)
        if result.returncode:
            text = (self.base / "commands.log").read_text(errors="replace")[-3000:]
            server = self.data / "server.log"
            if server.exists():
                text += "\n" + server.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{text}")

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop()
            except RuntimeError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_postgres(tmp_path):
    server = PrivatePostgres(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.mark.postgres
async def test_postgres_stopped_mid_run_and_restarted(tmp_path, private_postgres, caplog):
    with caplog.at_level(logging.INFO, logger="keel.ops.traces"):
        async with Keel(tmp_path, private_postgres.url) as keel:
            ids = await _outage(keel, caplog, private_postgres.stop, private_postgres.start)
    assert _stored_ids(private_postgres.url, ids) == set(ids)
