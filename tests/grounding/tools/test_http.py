"""The `http` tool: arguments validated, URLs filled safely, only allowed hosts reached."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from keel.grounding.tools.base import ToolError
from keel.grounding.tools.http import HTTPOptions, HTTPTool, public_address

RATES_SCHEMA = {
    "type": "object",
    "properties": {"term_years": {"type": "integer", "enum": [15, 30]},
                   "state": {"type": "string", "minLength": 2, "maxLength": 2}},
    "required": ["term_years"],
    "additionalProperties": False,
}


SEEN = web.AppKey("seen", list)


def service() -> web.Application:
    seen: list[dict] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append({"method": request.method, "path": request.path, "raw_path": request.raw_path,
                     "query": dict(request.query), "body": body,
                     "auth": request.headers.get("Authorization")})
        return web.json_response({"ok": True, "path": request.path, "query": dict(request.query),
                                  "body": body})

    async def fail(request):
        return web.Response(status=503, text="maintenance until noon")

    async def slow(request):
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def redirect(request):
        raise web.HTTPFound("http://evil.example.com/steal")

    async def big(request):
        return web.Response(text="x" * 5000)

    async def trickle(request):  # no Content-Length: the cap must hold as the body arrives
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(50):
            await response.write(b"y" * 100)
        await response.write_eof()
        return response

    app = web.Application()
    app[SEEN] = seen
    app.router.add_route("*", "/rates", record)
    app.router.add_route("*", "/items/{id}", record)
    app.router.add_post("/echo", record)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    app.router.add_get("/trickle", trickle)
    return app


@pytest.fixture
async def server():
    server = TestServer(service(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def base(server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def tool(**options) -> HTTPTool:
    t = HTTPTool("t", HTTPOptions(**options))
    await t.start()
    return t


async def test_get_sends_arguments_as_query_and_headers(server):
    t = await tool(url=f"{base(server)}/rates", parameters=RATES_SCHEMA,
                   headers={"Authorization": "Bearer s3cret"})
    try:
        result = orjson.loads(await t.call("t", {"term_years": 30, "state": "CA"}))
    finally:
        await t.aclose()
    assert result["query"] == {"term_years": "30", "state": "CA"}
    assert server.app[SEEN][-1]["auth"] == "Bearer s3cret"
    assert t.definitions()[0]["function"]["parameters"] == RATES_SCHEMA


async def test_post_sends_a_json_body_and_fills_placeholders(server):
    t = await tool(url=f"{base(server)}/items/{{id}}", method="post",
                   parameters={"type": "object", "properties": {"id": {"type": "string"},
                                                                "qty": {"type": "integer"}}})
    try:
        result = orjson.loads(await t.call("t", {"id": "a1", "qty": 2}))
    finally:
        await t.aclose()
    assert result["path"] == "/items/a1" and result["body"] == {"qty": 2}


async def test_invalid_arguments_say_what_is_wrong_and_send_nothing(server):
    t = await tool(url=f"{base(server)}/rates", parameters=RATES_SCHEMA)
    try:
        with pytest.raises(ToolError) as info:
            await t.call("t", {"term_years": 31, "state": "California", "x": 1})
    finally:
        await t.aclose()
    message = str(info.value)
    assert "term_years" in message and "state" in message and "'x'" in message
    assert server.app[SEEN] == []


@pytest.mark.parametrize("value", ["../admin", "@evil.com", "x/../../admin", "evil.com:80/x#",
                                   "a?b=c"])
async def test_a_path_argument_cannot_change_host_or_path(server, value):
    t = await tool(url=f"{base(server)}/items/{{id}}")
    try:
        result = orjson.loads(await t.call("t", {"id": value}))
    finally:
        await t.aclose()
    seen = server.app[SEEN][-1]
    assert seen["path"] == f"/items/{value}"  # one path segment, decoded by the service
    assert seen["raw_path"].count("/") == 2 and seen["query"] == {}
    assert result["ok"]


@pytest.mark.parametrize("value", [".", ".."])
async def test_dot_segments_are_refused(server, value):
    t = await tool(url=f"{base(server)}/items/{{id}}")
    try:
        with pytest.raises(ToolError, match="may not be"):
            await t.call("t", {"id": value})
    finally:
        await t.aclose()


async def test_a_templated_host_reaches_only_allowed_hosts(server):
    t = await tool(url=f"http://{{host}}:{server.port}/rates",
                   parameters={"type": "object", "properties": {"host": {"type": "string"}}},
                   allowed_hosts=[f"127.0.0.1:{server.port}"])
    try:
        assert orjson.loads(await t.call("t", {"host": "127.0.0.1"}))["ok"]
        for host in ("evil.com", "localhost", "127.0.0.2", "evil.com@127.0.0.1"):
            with pytest.raises(ToolError, match="refused"):
                await t.call("t", {"host": host})
    finally:
        await t.aclose()
    assert len(server.app[SEEN]) == 1


def test_a_templated_host_needs_an_explicit_allow_list():
    with pytest.raises(ValidationError, match="allowed_hosts"):
        HTTPOptions(url="http://{host}/rates")
    with pytest.raises(ValidationError, match="http"):
        HTTPOptions(url="file:///etc/passwd")


async def test_the_default_allow_list_is_the_urls_own_host_and_port(server):
    t = HTTPTool("t", HTTPOptions(url=f"{base(server)}/rates", allowed_hosts=["example.com"]))
    with pytest.raises(ToolError, match="refused"):
        await t.call("t", {})
    own = HTTPOptions(url="https://api.example.com/v1/rates")
    assert own.allowed() == {"api.example.com:443"}


async def test_redirects_are_not_followed(server):
    t = await tool(url=f"{base(server)}/redirect")
    try:
        with pytest.raises(ToolError, match="HTTP 302"):
            await t.call("t", {})
    finally:
        await t.aclose()


async def test_non_2xx_and_timeouts_become_tool_errors(server):
    t = await tool(url=f"{base(server)}/fail")
    slow = await tool(url=f"{base(server)}/slow", timeout_s=0.2)
    try:
        with pytest.raises(ToolError, match="HTTP 503.*maintenance until noon"):
            await t.call("t", {})
        with pytest.raises(ToolError, match="within 0.2 s"):
            await slow.call("t", {})
    finally:
        await t.aclose()
        await slow.aclose()


async def test_a_bare_host_entry_allows_only_the_default_ports(server):
    assert HTTPOptions(url="https://example.com/x", allowed_hosts=["Example.com"]).allowed() \
        == {"example.com:80", "example.com:443"}
    bare = await tool(url=f"{base(server)}/rates", allowed_hosts=["127.0.0.1"])
    with_port = await tool(url=f"{base(server)}/rates", allowed_hosts=[f"127.0.0.1:{server.port}"])
    try:
        with pytest.raises(ToolError, match="refused"):
            await bare.call("t", {})
        assert orjson.loads(await with_port.call("t", {}))["ok"]
    finally:
        await bare.aclose()
        await with_port.aclose()
    assert len(server.app[SEEN]) == 1


async def test_a_host_from_an_argument_that_resolves_inside_the_network_is_refused(server):
    t = await tool(url=f"http://{{host}}:{server.port}/rates",
                   parameters={"type": "object", "properties": {"host": {"type": "string"}}},
                   allowed_hosts=[f"localhost:{server.port}", f"127.0.0.1:{server.port}"])
    try:
        with pytest.raises(ToolError, match="refused: localhost resolves to an address inside"):
            await t.call("t", {"host": "localhost"})
        # An address written in allowed_hosts is trusted as written.
        assert orjson.loads(await t.call("t", {"host": "127.0.0.1"}))["ok"]
    finally:
        await t.aclose()
    assert len(server.app[SEEN]) == 1


async def test_a_host_written_in_the_url_stays_trusted(server):
    t = await tool(url=f"http://localhost:{server.port}/rates")
    try:
        assert orjson.loads(await t.call("t", {}))["ok"]
    finally:
        await t.aclose()


@pytest.mark.parametrize("address, public", [
    ("169.254.169.254", False), ("fd00:ec2::254", False), ("10.1.2.3", False),
    ("172.16.0.1", False), ("192.168.1.1", False), ("127.0.0.1", False), ("::1", False),
    ("::ffff:127.0.0.1", False), ("100.100.100.200", False), ("0.0.0.0", False),
    ("fe80::1%eth0", False), ("224.0.0.1", False), ("93.184.216.34", True),
    ("2606:2800:220:1::1", True),
])
def test_which_addresses_are_public(address, public):
    assert public_address(address) is public


@pytest.mark.parametrize("path", ["/big", "/trickle"])
async def test_a_body_over_the_cap_is_a_tool_error(server, path):
    capped = await tool(url=f"{base(server)}{path}", max_response_bytes=1000)
    roomy = await tool(url=f"{base(server)}{path}", max_response_bytes=5000)
    try:
        with pytest.raises(ToolError, match="over 1000 bytes"):
            await capped.call("t", {})
        assert len(await roomy.call("t", {})) == 5000
    finally:
        await capped.aclose()
        await roomy.aclose()
