"""The console's shell: sign-in and out, what a refused or missing key sees, the vendored files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.config import AuthConfig, ConsoleConfig
from keel.gateway import Gateway
from tests.api.conftest import fake_config

ADMIN_KEY = "sk-admin-console-test-0123456789"
VENDOR = Path(__file__).resolve().parents[2] / "keel" / "console" / "static" / "vendor"


@pytest.fixture
async def secured(tmp_path):
    """(base URL, gateway) of an in-process Keel with auth on (an admin key)."""
    gateway = Gateway(fake_config(tmp_path, auth=AuthConfig(admin_key=ADMIN_KEY)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


async def test_with_auth_off_the_console_opens_without_sign_in(keel_console, http):
    base, _ = keel_console
    async with http.get(f"{base}/console") as r:
        assert r.status == 200 and str(r.url).endswith("/console/traces")
        html = await r.text()
    assert "<title>Traces · Keel console</title>" in html and "Sign out" not in html
    async with http.get(f"{base}/console/login", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/console/traces"


async def test_sign_in_sets_an_http_only_strict_cookie_and_returns_to_the_page(secured, http):
    base, _ = secured
    async with http.get(f"{base}/console/traces?model=x", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == "/console/login?next=/console/traces?model%3Dx"
    async with http.get(f"{base}/console/login?next=/console/traces") as r:
        html = await r.text()
    assert r.status == 200 and 'name="key"' in html and 'type="password"' in html
    async with http.post(f"{base}/console/login", data={"key": ADMIN_KEY,
                         "next": "/console/traces?model=x"}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/console/traces?model=x"
        cookie = r.headers["Set-Cookie"]
    assert "keel_console=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with http.get(f"{base}/console/traces") as r:  # the session keeps the cookie
        assert r.status == 200 and "Sign out" in await r.text()
    async with http.post(f"{base}/console/logout", allow_redirects=False) as r:
        assert r.status == 303 and 'keel_console=""' in r.headers["Set-Cookie"]


async def test_a_wrong_key_gets_the_form_again_saying_why(secured, http):
    base, _ = secured
    async with http.post(f"{base}/console/login", data={"key": "sk-wrong"},
                         allow_redirects=False) as r:
        html = await r.text()
    assert r.status == 200 and 'role="alert"' in html and "sk-wrong" not in html
    assert "Set-Cookie" not in r.headers


async def test_sign_in_never_sends_the_browser_off_the_console(secured, http):
    base, _ = secured
    for target in ("https://evil.example/", "//evil.example/", "/v1/models"):
        async with http.post(f"{base}/console/login", data={"key": ADMIN_KEY, "next": target},
                             allow_redirects=False) as r:
            assert r.headers["Location"] == "/console/traces", target


async def test_the_console_can_be_switched_off(tmp_path, http):
    gateway = Gateway(fake_config(tmp_path, console=ConsoleConfig(enabled=False)))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    try:
        async with http.get(str(server.make_url("/console/traces"))) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_url"
    finally:
        await server.close()


def test_vendored_files_are_the_ones_their_readme_records():
    table = (VENDOR / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", table, re.M)
    assert {name for name, _ in rows} == {"htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in rows:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    for licence in ("htmx.LICENSE", "uPlot.LICENSE"):
        assert (VENDOR / licence).stat().st_size > 100


async def test_a_console_form_counts_the_cookie_only_when_the_browser_says_same_origin(
        secured, http):
    base, _ = secured
    cookie = {"Cookie": f"keel_console={ADMIN_KEY}"}
    async with http.post(f"{base}/console/logout", headers=cookie, allow_redirects=False) as r:
        assert r.status == 303  # public either way
    url = f"{base}/console/traces/x/replay"
    async with http.post(url, headers={**cookie, "Sec-Fetch-Site": "cross-site"}) as r:
        assert r.status == 401
    async with http.post(url, headers={**cookie, "Sec-Fetch-Site": "same-origin"}) as r:
        assert r.status == 404  # signed in: the trace does not exist
    async with http.post(f"{base}/v1/chat/completions", json={"model": "fake/echo"},
                         headers={**cookie, "Sec-Fetch-Site": "same-origin"}) as r:
        assert r.status == 401  # the API itself never takes the cookie without a header
