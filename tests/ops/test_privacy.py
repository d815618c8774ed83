"""`tracing.record_bodies: false`: no user or model text reaches the store, or the log.

Requests carrying a marker (in the user's message, in a tool's arguments, in a JSON value the
schema refuses, in a field that fails validation) go through a real Keel on the fake provider
with the knowledge, tools and json_mode layers; then every column of every table, and the raw
SQLite files, are searched for the marker. A run with bodies on is the control: there the
marker is stored, so the search would find a leak.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import pytest
import sqlalchemy as sa
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import KeelConfig
from keel.gateway import Gateway
from keel.store import open_store
from keel.store.db import sqlite_path

MARKER = "zq7PRIVATEq7z"
TOOL_MARKER = f"{MARKER}-tool-argument"


def lookup(code: Literal["zq7PRIVATEq7z-tool-argument"]) -> str:
    """Look a code up (the fake model calls it with the only value its schema allows)."""
    return f"nothing is known about {code}"


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _config(tmp_path: Path, db_url: str, record_bodies: bool) -> KeelConfig:
    return KeelConfig.model_validate({
        "state_dir": str(tmp_path),
        "store": {"url": db_url},
        "tracing": {"record_bodies": record_bodies, "flush_interval_s": 0.05},
        "providers": {"fake": {"kind": "fake"}},
        "embedders": {"minilm": {"kind": "fake", "dim": 64}},
        "tools": {"lookup": {"kind": "python", "function": f"{__name__}:lookup"}},
        "models": {
            "grounded": {"provider": "fake", "model": "echo",
                         "knowledge": {"collection": "docs", "min_similarity": -1,
                                       "rewrite_query": True}},
            "tooled": {"provider": "fake", "model": "tool-call",
                       "tools": {"tools": ["lookup"], "max_rounds": 2}},
            "jsonic": {"provider": "fake", "model": "echo"},
        },
        "pipeline": [{"json_mode": {"repair_attempts": 1}}],
    })


async def _send_everything(base: str) -> list[int]:
    """Every path that puts request text on a trace; returns the statuses."""
    user = f"tell me about {MARKER} please"
    bad_json = f'{{"n": "{MARKER}-json-value"}}'  # echoed back, refused by the schema
    json_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    requests = [
        ("/v1/knowledge/docs/documents",
         {"documents": [{"id": "faq", "text": "# Hours\n\nWe open at nine."}]}),
        ("/v1/chat/completions", {"model": "grounded", "messages": [
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": user}]}),
        ("/v1/chat/completions", {"model": "grounded", "stream": True,
                                  "messages": [{"role": "user", "content": user}]}),
        ("/v1/chat/completions", {"model": "tooled",
                                  "messages": [{"role": "user", "content": user}]}),
        ("/v1/chat/completions", {"model": "tooled", "stream": True,
                                  "messages": [{"role": "user", "content": user}]}),
        ("/v1/chat/completions", {"model": "jsonic", "response_format": json_format,
                                  "messages": [{"role": "user", "content": bad_json}]}),
        ("/v1/chat/completions", {"model": "jsonic", "response_format": json_format,
                                  "stream": True,
                                  "messages": [{"role": "user", "content": bad_json}]}),
        ("/v1/chat/completions", {"model": "jsonic", "temperature": f"{MARKER}-field",
                                  "messages": [{"role": "user", "content": user}]}),
        ("/v1/embeddings", {"model": "minilm", "input": user}),
        ("/v1/chat/completions", {"model": f"{MARKER}-model",
                                  "messages": [{"role": "user", "content": user}]}),
    ]
    statuses = []
    async with ClientSession() as session:
        for path, body in requests:
            async with session.post(base + path, json=body) as response:
                await response.read()
                statuses.append(response.status)
    return statuses


async def _serve_and_send(tmp_path, db_url, record_bodies) -> list[int]:
    gateway = Gateway(_config(tmp_path, db_url, record_bodies))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        return await _send_everything(str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()  # closes the gateway: every trace written


def _dump_database(db_url: str) -> tuple[str, set[str]]:
    """Every value of every column of every table, as text; and the span names seen."""
    store = open_store(db_url, migrate=False)
    parts, span_names = [], set()
    try:
        with store.engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    for value in row:
                        if isinstance(value, (bytes, bytearray, memoryview)):
                            value = bytes(value).decode("latin-1")
                        parts.append(repr(value))
            for (spans,) in conn.execute(sa.text("SELECT spans FROM traces")):
                spans = json.loads(spans) if isinstance(spans, str) else spans
                span_names.update(s["name"] for s in spans or ())
    finally:
        store.close()
    path = sqlite_path(db_url)
    if path is not None:  # the raw files too: nothing written, even to a page since freed
        for file in path.parent.glob(path.name + "*"):
            parts.append(file.read_bytes().decode("latin-1"))
    return "\n".join(parts), span_names


async def test_no_user_text_is_stored_or_logged_with_bodies_off(tmp_path, db_url, caplog):
    with caplog.at_level(logging.INFO):
        statuses = await _serve_and_send(tmp_path, db_url, record_bodies=False)
    # The paths ran: answers, the failed repair (502), the refused field (400), no such model.
    assert statuses[:5] == [200, 200, 200, 200, 200], statuses
    assert {502, 400, 404} <= set(statuses), statuses

    dump, span_names = _dump_database(db_url)
    assert {"knowledge.retrieve", "tool:lookup", "json_mode.repair"} <= span_names
    assert MARKER not in dump
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert MARKER not in logged


async def test_the_marker_is_found_when_bodies_are_recorded(tmp_path, db_url):
    """The control: with bodies on, the same search finds the marker, so it would find a leak."""
    await _serve_and_send(tmp_path, db_url, record_bodies=True)
    dump, _ = _dump_database(db_url)
    assert MARKER in dump and TOOL_MARKER in dump and f"{MARKER}-json-value" in dump


@pytest.mark.parametrize("attrs", [
    {"query": MARKER, "hits": [{"chunk_id": 3, "score": 0.5, "source": "faq.md"}]},
    {"arguments": MARKER, "ok": False, "error": MARKER, "duration_ms": 1.5},
    {"problem": MARKER, "nested": {"deep": [MARKER, 1]}, "blob": MARKER.encode()},
])
def test_span_attributes_are_redacted_by_construction(attrs):
    from keel.ops.privacy import redact_attrs, redact_error
    from keel.ops.traces import trace_row
    from keel.pipeline.trace import Trace

    trace = Trace(model="m")
    with trace.span("some.layer") as span:
        span.attrs.update(attrs, collection="docs", version="v1")
    trace.error = {"message": f"bad {MARKER}", "type": "invalid_request_error",
                   "param": "temperature", "code": "invalid_value"}
    trace.finish(400)
    row = trace_row(trace, record_bodies=False)
    assert MARKER not in repr(row)
    assert row["spans"][0]["attrs"]["collection"] == "docs"
    assert row["error"] == {"message": "[redacted]", "type": "invalid_request_error",
                            "param": "temperature", "code": "invalid_value"}
    assert redact_attrs({"n": 3, "ok": True, "x": None}) == {"n": 3, "ok": True, "x": None}
    assert redact_error(None) is None
    assert MARKER in repr(trace_row(trace, record_bodies=True))
