"""A real OTLP/HTTP traces receiver on a loopback port, for end-to-end tests of the export.

It speaks what a collector speaks on 4318: `POST /v1/traces` with an `ExportTraceServiceRequest`
in protobuf (gzip- or deflate-encoded or not: aiohttp decodes either), answered with an empty
`ExportTraceServiceResponse`. Each span it receives is kept as a `ReceivedSpan` for assertions.
It runs on a thread of its own with its own event loop, so a test can use it from synchronous
code (next to a `keel serve` subprocess) as well as from async code:

    with OTLPReceiver() as receiver:
        ... endpoint=receiver.endpoint ...
        span = receiver.wait_for(lambda s: s.name == "chat fake/echo")
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None  # None for a root span
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 SERVER, 3 CLIENT, 1 INTERNAL
    attributes: dict[str, Any]
    status_code: int  # 0 UNSET, 1 OK, 2 ERROR
    status_message: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any] = field(default_factory=dict)


class OTLPReceiver:
    """Collects spans POSTed to `endpoint` (http://127.0.0.1:PORT/v1/traces)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests: list[dict[str, str]] = []  # each POST's headers, e.g. content-encoding
        self.endpoint = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10) or not self.endpoint:
            raise RuntimeError("the OTLP receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, started: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}/v1/traces"
        started.set()
        loop.run_forever()
        loop.close()

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="only application/x-protobuf")
        # aiohttp's payload parser has already undone a gzip or deflate Content-Encoding.
        body = await request.read()
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        spans = list(_decode(message))
        with self._lock:
            self.requests.append(dict(request.headers))
            self.spans.extend(spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf")

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, match: Callable[[ReceivedSpan], bool], timeout: float = 20) -> ReceivedSpan:
        """The first span `match` accepts, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            for span in self.received():
                if match(span):
                    return span
            if time.monotonic() > deadline:
                names = [s.name for s in self.received()]
                raise AssertionError(f"no matching span within {timeout}s; received {names}")
            time.sleep(0.05)


def _decode(message: ExportTraceServiceRequest):
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex() or None,
                    kind=span.kind,
                    attributes=_attributes(span.attributes),
                    status_code=span.status.code,
                    status_message=span.status.message,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    resource=resource,
                )


def _attributes(pairs) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


@pytest.fixture
def otlp_receiver():
    with OTLPReceiver() as receiver:
        yield receiver
