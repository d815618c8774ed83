"""Authentication on every route, through a real `keel serve` (issue 8).

The routes are read from the app `create_app` builds, so a route added later is checked here
without anyone remembering to: each one refuses no key, a wrong, revoked or expired key, and a
key without its surface, and lets the admin key and a key with the surface through.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from keel.api.app import create_app
from keel.api.auth import ANY_KEY, PUBLIC, check_exposure, is_console_path, is_loopback, surface_for
from keel.config import AuthConfig, KeelConfig
from keel.errors import ConfigError
from keel.gateway import Gateway
from keel.ops.keys import KeyStore
from keel.ops.principal import SURFACES
from keel.store import open_store
from keel.store.models import traces
from tests.api.conftest import fake_config
from tests.servers import http, keel_server

ADMIN_KEY = "admin-secret-for-the-auth-tests-0123456789"
WRONG_KEY = "sk-keel-this-is-not-a-key-anyone-made-wxyz"
CHAT = {"model": "fake/echo", "messages": [{"role": "user", "content": "hello"}]}
# What each route's parameters are filled with: values that exist or not, either way the
# handler answers after auth (a 404 for an unknown key id is a pass for auth).
PATH_VALUES = {"model_id": "fake/echo", "collection": "docs", "doc_id": "d1",
               "key_id": "key_0000000000000000"}
BODIES = {
    ("POST", "/v1/chat/completions"): CHAT,
    ("POST", "/v1/embeddings"): {"model": "no-such-embedder", "input": "hi"},
    ("POST", "/v1/knowledge/{collection}/search"): {"query": "hi"},
    ("POST", "/v1/knowledge/{collection}/documents"): {"documents": []},
    ("POST", "/v1/feedback"): {"trace_id": "no-such-trace", "score": 1},
    ("POST", "/v1/keys"): {"name": "made-by-the-auth-test"},
}


def config_yaml(db: Path, auth: str = "auth: {refresh_interval_s: 0.2}") -> str:
    return f"""
store: {{url: "sqlite:///{db.as_posix()}"}}
{auth}
tracing: {{flush_interval_s: 0.05}}
providers: {{fake: {{kind: fake}}}}
models:
  fake/echo: {{provider: fake, model: echo}}
  fake/json: {{provider: fake, model: json}}
"""


def registered_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every (method, canonical path) the app serves; HEAD is GET's twin."""
    app = create_app(Gateway(fake_config(tmp_path)))
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                   if r.method != "HEAD"})


def url_of(base: str, canonical: str) -> str:
    if canonical == "/console/static":  # a static resource's canonical path is its prefix
        canonical += "/console.css"
    path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "x"), canonical)
    return base.removesuffix("/v1") + path


def call(base: str, method: str, canonical: str, key: str | None = None, header="Bearer"):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "Bearer" else {"api-key": key}
    body = json.dumps(BODIES.get((method, canonical))).encode() \
        if (method, canonical) in BODIES else None
    request = urllib.request.Request(url_of(base, canonical), data=body, method=method,
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), _parsed(response)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), _parsed(exc)


def _parsed(response):
    """JSON bodies parsed; others (/metrics is Prometheus text) as text. An event stream (the
    console's live traces) never ends by itself: only its status and headers are checked."""
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        return ""
    raw = response.read()
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return json.loads(raw)
    return raw.decode(errors="replace")


class Server:
    """A `keel serve` with auth on, and a KeyStore on its database."""

    def __init__(self, base: str, db: Path) -> None:
        self.base = base
        self.store = open_store(f"sqlite:///{db.as_posix()}")
        self.keys = KeyStore(self.store)

    def key(self, **fields) -> tuple[str, str]:
        name = fields.pop("name", "test-key")
        for attempt in range(5):
            try:
                record, secret = self.keys.create(name, **fields)
                return record.id, secret
            except sa.exc.OperationalError as exc:
                # This process writes into the server's SQLite file while the server writes
                # too; under load a write has met "database is locked" here (CI, 2026-12-01).
                # The test is about auth, not about two writers on one SQLite file.
                if "locked" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    db = workdir / "keel.db"
    with keel_server(workdir, config_yaml(db), env={"KEEL_ADMIN_KEY": ADMIN_KEY}) as base:
        srv = Server(base, db)
        yield srv
        srv.store.close()


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> list[tuple[str, str]]:
    found = registered_routes(tmp_path_factory.mktemp("routes"))
    assert ("POST", "/v1/chat/completions") in found and len(found) >= 10
    return found


def private(routes):
    """Private routes that answer a refused key in the OpenAI shape: every one but the console's
    pages, which send a browser to the sign-in page instead (see the console tests below)."""
    return [r for r in routes if surface_for(*r) != PUBLIC and not console_page(*r)]


def console_page(method: str, canonical: str) -> bool:
    return method == "GET" and is_console_path(canonical)


def console_pages(routes):
    return [r for r in routes if console_page(*r) and surface_for(*r) != PUBLIC]


def assert_openai_error(status: int, headers: dict, body: dict, expected: int, code: str):
    assert status == expected, (status, body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if expected == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_every_route_has_a_surface(routes):
    unclassified = [r for r in routes if surface_for(*r) is None]
    assert not unclassified, f"routes with no surface in keel.api.auth: {unclassified}"


def test_every_private_route_refuses_a_missing_or_wrong_key(server, routes):
    for method, canonical in private(routes):
        for key in (None, WRONG_KEY):
            status, headers, body = call(server.base, method, canonical, key)
            assert_openai_error(status, headers, body, 401, "invalid_api_key")
            assert WRONG_KEY not in body["error"]["message"]
        status, headers, body = call(server.base, method, canonical, WRONG_KEY, header="api-key")
        assert_openai_error(status, headers, body, 401, "invalid_api_key")


def test_every_private_route_refuses_a_revoked_and_an_expired_key(server, routes):
    revoked_id, revoked = server.key(surfaces=list(SURFACES))
    server.keys.revoke(revoked_id)
    _, expired = server.key(surfaces=list(SURFACES), expires_in_s=1e-6)
    for method, canonical in private(routes):
        status, headers, body = call(server.base, method, canonical, revoked)
        assert_openai_error(status, headers, body, 401, "invalid_api_key")
        assert "revoked" in body["error"]["message"] and revoked not in body["error"]["message"]
        status, headers, body = call(server.base, method, canonical, expired)
        assert_openai_error(status, headers, body, 401, "invalid_api_key")
        assert "expired" in body["error"]["message"]


def test_every_route_refuses_a_key_without_its_surface_and_admits_one_with_it(server, routes):
    for method, canonical in private(routes):
        surface = surface_for(method, canonical)
        if surface == ANY_KEY:
            continue
        others = [s for s in SURFACES if s != surface]
        _, without = server.key(surfaces=others)
        status, headers, body = call(server.base, method, canonical, without)
        assert_openai_error(status, headers, body, 403, "surface_not_allowed")
        assert surface in body["error"]["message"]
        _, scoped = server.key(surfaces=[surface])
        status, _, body = call(server.base, method, canonical, scoped)
        assert status not in (401, 403), (method, canonical, status, body)


def test_the_admin_key_passes_every_route_and_public_routes_need_no_key(server, routes):
    for method, canonical in routes:
        key = None if surface_for(method, canonical) == PUBLIC else ADMIN_KEY
        status, _, body = call(server.base, method, canonical, key)
        assert status not in (401, 403), (method, canonical, status, body)
        if key is not None:  # the api-key header Azure OpenAI clients send works as well
            status, _, body = call(server.base, method, canonical, key, header="api-key")
            assert status not in (401, 403), (method, canonical, status, body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def page(base: str, canonical: str, cookie: str | None = None):
    """(status, Location) of a console page load, without following a redirect."""
    headers = {"Cookie": f"keel_console={cookie}"} if cookie else {}
    request = urllib.request.Request(url_of(base, canonical), headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers.get("Location")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location")


def test_console_pages_send_a_browser_without_a_usable_key_to_sign_in(server, routes):
    pages = console_pages(routes)
    assert ("GET", "/console/traces") in pages
    _, without = server.key(surfaces=[s for s in SURFACES if s != "console"])
    _, scoped = server.key(surfaces=["console"])
    for _, canonical in pages:
        status, location = page(server.base, canonical)
        assert status == 303 and location.startswith("/console/login?next="), (canonical, status)
        status, location = page(server.base, canonical, WRONG_KEY)
        assert status == 303 and "error=" in location and WRONG_KEY not in location
        status, location = page(server.base, canonical, without)
        assert status == 303 and "console" in urllib.parse.unquote(location), location
        for key in (scoped, ADMIN_KEY):
            status, location = page(server.base, canonical, key)
            assert status not in (401, 403) and not (location or "").startswith(
                "/console/login"), (canonical, status, location)


def test_the_console_cookie_counts_only_on_console_pages_or_with_a_console_header(server):
    _, key = server.key(surfaces=["console", "chat"])
    cookie = {"Cookie": f"keel_console={key}"}
    status, headers, body = http("POST", f"{server.base}/chat/completions", CHAT, cookie)
    assert_openai_error(status, headers, body, 401, "invalid_api_key")
    status, _, _ = http("POST", f"{server.base}/chat/completions", CHAT,
                        {**cookie, "X-Keel-Console": "1"})
    assert status == 200


def test_any_valid_key_lists_models_and_an_unknown_url_stays_a_404(server):
    _, key = server.key(surfaces=["feedback"])
    status, _, body = http("GET", f"{server.base}/models", headers={"Authorization": f"Bearer {key}"})
    assert status == 200 and {m["id"] for m in body["data"]} >= {"fake/echo", "fake/json"}
    status, _, body = http("GET", f"{server.base}/no-such-route",
                           headers={"Authorization": f"Bearer {key}"})
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, headers, body = http("GET", f"{server.base}/no-such-route")
    assert_openai_error(status, headers, body, 401, "invalid_api_key")


def test_a_model_scoped_key_sees_and_calls_only_its_models(server):
    _, key = server.key(models=["fake/echo"])
    auth = {"Authorization": f"Bearer {key}"}
    status, _, body = http("GET", f"{server.base}/models", headers=auth)
    assert status == 200 and [m["id"] for m in body["data"]] == ["fake/echo"]
    assert http("GET", f"{server.base}/models/fake/echo", headers=auth)[0] == 200
    status, _, body = http("GET", f"{server.base}/models/fake/json", headers=auth)
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert http("POST", f"{server.base}/chat/completions", CHAT, auth)[0] == 200
    status, headers, body = http("POST", f"{server.base}/chat/completions",
                                 {**CHAT, "model": "fake/json"}, auth)
    assert_openai_error(status, headers, body, 403, "model_not_allowed")
    # The admin key sees every model.
    status, _, body = http("GET", f"{server.base}/models",
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert {m["id"] for m in body["data"]} >= {"fake/echo", "fake/json"}


def test_a_key_revoked_in_the_store_is_refused_within_the_refresh_interval(server):
    key_id, key = server.key()
    auth = {"Authorization": f"Bearer {key}"}
    assert http("GET", f"{server.base}/models", headers=auth)[0] == 200  # cached now
    server.keys.revoke(key_id)  # as `keel keys revoke` or another replica would
    deadline = time.monotonic() + 5  # refresh_interval_s is 0.2
    while (status := http("GET", f"{server.base}/models", headers=auth)[0]) == 200:
        assert time.monotonic() < deadline, "the revoked key still works after 5 s"
        time.sleep(0.05)
    assert status == 401


def test_auth_off_on_loopback_needs_no_key(tmp_path):
    db = tmp_path / "keel.db"
    with keel_server(tmp_path, config_yaml(db, auth=""), env={"KEEL_ADMIN_KEY": ""}) as base:
        status, _, body = http("GET", f"{base}/models")
        assert status == 200 and len(body["data"]) >= 2
        assert http("POST", f"{base}/chat/completions", CHAT)[0] == 200
        assert http("GET", f"{base}/knowledge")[0] == 200


def test_an_auth_section_alone_turns_auth_on_for_loopback(tmp_path):
    db = tmp_path / "keel.db"
    with keel_server(tmp_path, config_yaml(db, auth="auth: {}"),
                     env={"KEEL_ADMIN_KEY": ""}) as base:
        status, headers, body = http("GET", f"{base}/models")
        assert_openai_error(status, headers, body, 401, "invalid_api_key")
        assert http("GET", base.removesuffix("/v1") + "/healthz")[0] == 200
        with closing(open_store(f"sqlite:///{db.as_posix()}")) as store:
            _, key = KeyStore(store).create("only-virtual-keys")
        assert http("GET", f"{base}/models", headers={"Authorization": f"Bearer {key}"})[0] == 200


# -- secrets stay out of traces and logs ----------------------------------------------------------

@contextmanager
def logged_server(workdir: Path, config: str, args=(), env=None, timeout: float = 120):
    """`keel serve` with its output kept: yields (base URL on 127.0.0.1, output so far)."""
    (workdir / "keel.yaml").write_text(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "keel", "serve", "--config", "keel.yaml", "--port", "0", *args],
        cwd=workdir, env={**os.environ, **(env or {})}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []

    def drain() -> None:  # an unread pipe that fills up would block the server
        for line in process.stdout:  # line by line: the test reads `seen` meanwhile
            seen.append(line)  # noqa: PERF402

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not (listening := [line for line in seen if line.startswith("Keel listening")]):
            assert process.poll() is None, f"keel serve exited:\n{''.join(seen)}"
            assert time.monotonic() < deadline, f"keel serve did not start:\n{''.join(seen)}"
            time.sleep(0.05)
        port = listening[0].split()[-1].rsplit(":", 1)[1].split("/")[0]
        yield f"http://127.0.0.1:{port}/v1", lambda: "".join(seen)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_secrets_never_reach_traces_or_logs(tmp_path):
    db = tmp_path / "keel.db"
    with logged_server(tmp_path, config_yaml(db), env={"KEEL_ADMIN_KEY": ADMIN_KEY}) as (base,
                                                                                        output):
        with closing(open_store(f"sqlite:///{db.as_posix()}")) as store:
            record, good = KeyStore(store).create("tracer", metadata={"team": "a"})
        for key in (WRONG_KEY, good, ADMIN_KEY):
            for header in ({"Authorization": f"Bearer {key}"}, {"api-key": key}):
                http("POST", f"{base}/chat/completions", {**CHAT, "user": "u1"}, header)
                http("POST", f"{base}/chat/completions", {**CHAT, "model": "nope"}, header)
        # The traced requests are written within a flush interval (0.05 s); wait for them.
        with closing(open_store(f"sqlite:///{db.as_posix()}")) as store:
            deadline = time.monotonic() + 10
            while True:
                with store.engine.connect() as conn:
                    rows = [dict(r) for r in conn.execute(sa.select(traces)).mappings()]
                if len(rows) >= 8 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert len(rows) >= 8, rows
        assert any(row["key_id"] == record.id and row["key_metadata"] == {"team": "a"}
                   for row in rows)
        text = repr(rows) + output()
        for secret in (WRONG_KEY, good, ADMIN_KEY):
            assert secret not in text


# -- who may start without auth ---------------------------------------------------------------

def test_loopback_addresses():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", None, "10.0.0.5", "keel.example.com"):
        assert not is_loopback(host), host


def test_check_exposure(tmp_path, monkeypatch):
    monkeypatch.delenv("KEEL_ADMIN_KEY", raising=False)
    off = fake_config(tmp_path)
    check_exposure(off, "127.0.0.1")
    check_exposure(off, "0.0.0.0", insecure_no_auth=True)
    with pytest.raises(ConfigError) as info:
        check_exposure(off, "0.0.0.0")
    for hint in ("KEEL_ADMIN_KEY", "auth:", "docs/auth.md", "--insecure-no-auth"):
        assert hint in info.value.message
    check_exposure(fake_config(tmp_path, auth=AuthConfig()), "0.0.0.0")
    assert isinstance(off, KeelConfig)
    monkeypatch.setenv("KEEL_ADMIN_KEY", ADMIN_KEY)
    check_exposure(off, "0.0.0.0")


def test_serve_on_every_interface_without_auth_refuses_to_start(tmp_path):
    (tmp_path / "keel.yaml").write_text(config_yaml(tmp_path / "keel.db", auth=""))
    result = subprocess.run(
        [sys.executable, "-m", "keel", "serve", "--config", "keel.yaml", "--host", "0.0.0.0",
         "--port", "0"],
        check=False, cwd=tmp_path, env={**os.environ, "KEEL_ADMIN_KEY": ""}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for hint in ("KEEL_ADMIN_KEY", "docs/auth.md", "--insecure-no-auth"):
        assert hint in result.stderr
    assert "Keel listening" not in result.stdout


def test_serve_on_every_interface_with_insecure_no_auth_starts_and_warns(tmp_path):
    with logged_server(tmp_path, config_yaml(tmp_path / "keel.db", auth=""),
                       args=("--host", "0.0.0.0", "--insecure-no-auth"),
                       env={"KEEL_ADMIN_KEY": ""}) as (base, output):
        assert http("GET", f"{base}/models")[0] == 200  # reached over loopback
        assert "--insecure-no-auth" in output() and "warning" in output()
