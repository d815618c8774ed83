"""A fault-injecting HTTP proxy for tests: Keel -> FaultProxy -> `keel fake-upstream`.

It speaks just enough HTTP/1.1 to sit between Keel's upstream client and the fake upstream:
it reads each request (head and Content-Length body) from Keel, fetches the real answer from
the upstream, then writes its own response with its own framing (Content-Length for JSON,
one chunk per event for SSE), so it can break that response at a precise point. Keep-alive is
kept: after a clean answer the connection waits for Keel's next request.

`proxy.fault` (set from the test, read per request) picks what goes wrong; None passes through.
Before it resets a stream, the proxy waits (up to 5 s) for `proxy.client_got_data`, which the
test sets once the first bytes of the answer reached it: aiohttp drops bytes it has received but
not yet handed on when a reset arrives, so without this a busy machine could see the reset
before the first chunk and test a different case.

    kind               non-streaming answer                    streaming answer
    status             the fault's status (429 with Retry-After, 500, 502, 503) and an
                       OpenAI error body, without asking the upstream
    slow_headers       reads the request, never answers; waits for Keel to hang up
    reset_mid_body     half the body, then a TCP reset         1 event and half the next, reset
    reset_after_chunks `after` chunked pieces, then a reset    `after` events, then a reset
    stall              half the body, then silence until      `after` events, then silence
                       Keel hangs up                          until Keel hangs up
    trickle            the whole answer in 8 pieces (a stream: each event in 2), `delay`
                       seconds apart: each gap shorter than Keel's read timeout, the whole longer
    malformed_json     half the JSON, with a Content-Length    1 event, then `data: {"choices":`
                       that matches it                         then the rest and [DONE]
    truncated          Content-Length promises more than is    every event but [DONE], then a
                       sent; then a clean close (FIN)          clean end of the chunked body

The proxy runs on its own event loop in a thread (as `serve_fake_upstream` does), so its tasks
never count among the tasks of the loop under test; `open` is the number of client
connections it has not yet seen closed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Iterator

import aiohttp
import orjson

_REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = 500
    retry_after: str | None = None
    after: int = 2
    delay: float = 0.1


class FaultProxy:
    def __init__(self, upstream_root: str) -> None:
        self.upstream_root = upstream_root.rstrip("/")
        self.fault: Fault | None = None
        self.open = 0
        self.accepted = 0
        self.requests = 0
        self.port = 0
        self.client_got_data = threading.Event()
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> asyncio.Server:
        self._session = aiohttp.ClientSession()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests += 1
                if not await self._answer(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
            self.open -= 1

    async def _answer(self, request, reader, writer) -> bool:
        """Answer one request; False when the connection is finished with."""
        fault = self.fault
        kind = fault.kind if fault else "pass"
        if kind == "status":
            error = {"error": {"message": f"injected {fault.status}", "type": "server_error",
                               "param": None, "code": None}}
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            await _send(writer, fault.status, "application/json", orjson.dumps(error), extra)
            return True
        if kind == "slow_headers":
            await _until_closed(reader, writer)
            return False
        status, content_type, body = await self._fetch(request)
        if kind == "pass" or status != 200:
            await _send(writer, status, content_type, body)
            return True
        if content_type.startswith("text/event-stream"):
            return await _break_stream(reader, writer, fault, _events(body),
                                       self.client_got_data)
        return await _break_json(reader, writer, fault, body)

    async def _fetch(self, request) -> tuple[int, str, bytes]:
        method, target, headers, body = request
        forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        async with self._session.request(
            method, self.upstream_root + target, data=body, headers=forward
        ) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def _break_json(reader, writer, fault: Fault, body: bytes) -> bool:
    half = len(body) // 2
    if fault.kind == "reset_mid_body":
        writer.write(_head(200, "application/json", length=len(body)) + body[:half])
        await _reset(writer)
        return False
    if fault.kind == "reset_after_chunks":
        writer.write(_head(200, "application/json", chunked=True))
        step = max(1, len(body) // (fault.after + 1))
        for i in range(fault.after):
            writer.write(_chunk(body[i * step:(i + 1) * step]))
        await _reset(writer)
        return False
    if fault.kind == "stall":
        writer.write(_head(200, "application/json", length=len(body)) + body[:half])
        await _until_closed(reader, writer)
        return False
    if fault.kind == "trickle":
        writer.write(_head(200, "application/json", length=len(body)))
        await _trickle(writer, body, fault.delay, pieces=8)
        return True
    if fault.kind == "malformed_json":
        await _send(writer, 200, "application/json", body[:half])
        return True
    if fault.kind == "truncated":
        writer.write(_head(200, "application/json", length=len(body)) + body[:half])
        await writer.drain()
        return False  # the caller closes: a FIN where Keel expects more bytes
    raise ValueError(f"unknown fault {fault.kind!r}")


async def _break_stream(reader, writer, fault: Fault, events: list[bytes],
                        gate: threading.Event) -> bool:
    writer.write(_head(200, "text/event-stream", chunked=True))
    if fault.kind == "reset_mid_body":
        writer.write(_chunk(events[0]) + _chunk(events[1][: len(events[1]) // 2]))
        await _reset(writer, gate)
        return False
    if fault.kind == "reset_after_chunks":
        for event in events[: fault.after]:
            writer.write(_chunk(event))
        await _reset(writer, gate)
        return False
    if fault.kind == "stall":
        for event in events[: fault.after]:
            writer.write(_chunk(event))
        await _until_closed(reader, writer)
        return False
    if fault.kind == "trickle":
        for event in events:
            await _trickle(writer, event, fault.delay, chunked=True, pieces=2)
    elif fault.kind == "malformed_json":
        broken = b'data: {"choices": [{"delta": \n\n'
        for event in [events[0], broken, *events[1:]]:
            writer.write(_chunk(event))
    elif fault.kind == "truncated":
        for event in events:
            if event != b"data: [DONE]\n\n":
                writer.write(_chunk(event))
    else:
        raise ValueError(f"unknown fault {fault.kind!r}")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def _trickle(writer, data: bytes, delay: float, chunked=False, pieces=0) -> None:
    step = max(1, -(-len(data) // pieces)) if pieces else 16
    for i in range(0, len(data), step):
        piece = data[i:i + step]
        writer.write(_chunk(piece) if chunked else piece)
        await writer.drain()
        await asyncio.sleep(delay)


async def _until_closed(reader, writer) -> None:
    """Send nothing more; wait until Keel gives up and closes the connection."""
    await writer.drain()
    while await reader.read(65536):
        pass


async def _reset(writer, gate: threading.Event | None = None) -> None:
    """Flush what was written, let Keel read it (and pass it on, when `gate` says so), then
    end with a TCP RST."""
    await writer.drain()
    transport = writer.transport
    while transport.get_write_buffer_size():
        await asyncio.sleep(0.01)
    for _ in range(250 if gate is not None else 0):
        if gate.is_set():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _events(body: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]


def _head(status: int, content_type: str, *, length: int | None = None, chunked=False,
          extra: dict | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
             f"Content-Type: {content_type}"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _send(writer, status: int, content_type: str, body: bytes, extra=None) -> None:
    writer.write(_head(status, content_type, length=len(body), extra=extra) + body)
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader):
    """(method, target, headers, body) of the next request, or None at the end of input."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    method, target, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, target, headers, body


@contextmanager
def run_proxy(upstream_root: str) -> Iterator[FaultProxy]:
    """Serve a FaultProxy in front of `upstream_root` (http://host:port) from its own thread."""
    proxy = FaultProxy(upstream_root)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(proxy.start())
        except BaseException as exc:  # reported to the caller below
            state["error"] = exc
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.run_until_complete(proxy.close())
            loop.close()

    thread = threading.Thread(target=run, name="keel-fault-proxy", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the fault proxy did not start within 10 s")
    if "error" in state:
        raise state["error"]
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
