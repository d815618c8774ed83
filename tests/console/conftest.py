"""Console fixtures: an in-process Keel on the fake provider, and a real Chromium for the
browser tests.

`keel_console` is for server tests of each page's data (no browser): a Keel on a real loopback
socket, with the fake provider's models, whose store the test fills through the API (real
requests make real traces). Browser tests mark themselves `browser` and use `chromium`:
Debian's chromium (or the one KEEL_CHROMIUM names) driven by Playwright by its executable path.
`screenshot(page, name)` writes a full-page PNG under KEEL_TEST_ARTIFACTS (default
build/test-artifacts/console); with KEEL_UPDATE_SCREENSHOTS=1 it also refreshes the README's
copy under docs/images/console-<name>.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from keel.api import create_app
from keel.gateway import Gateway
from tests.api.conftest import fake_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("KEEL_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "console"
README_IMAGES = ROOT / "docs" / "images"


@pytest.fixture
async def keel_console(tmp_path):
    """(base URL without /v1, gateway) of an in-process Keel, auth off, fake provider."""
    gateway = Gateway(fake_config(tmp_path))
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), gateway
    await server.close()


@pytest.fixture
async def http():
    async with ClientSession() as s:
        yield s


def chromium_path() -> str | None:
    named = os.environ.get("KEEL_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium():
    """A Playwright Chromium browser (Debian's chromium, launched by path)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium: install Debian's `chromium` package or set KEEL_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


def screenshot(page, name: str) -> Path:
    """A full-page screenshot as a test artefact (and the README's copy, when asked)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("KEEL_UPDATE_SCREENSHOTS") == "1":
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_IMAGES / f"console-{name}.png")
    return path


# The site the browser tests open: `keel serve` (a real process on a real socket) on the fake
# provider. fake/slow-150 streams a word every 150 ms (long enough to press Stop); console/grounded
# answers from the support FAQ (ingested with the embedded MiniLM) and returns citations;
# console/guarded blocks a request that mentions "forbidden-topic" and redacts order numbers
# (ORD-123456) before the model sees them. Extend it rather than start another server: each start
# costs seconds.
CONSOLE_CONFIG = r"""
providers:
  fake: {kind: fake}
models:
  fake/echo: {provider: fake, model: echo, pricing: {input: 2.5, output: 10}}
  fake/slow-150:
    provider: fake
    model: slow-150
    console:
      description: "echoes you back, one word every 150 ms"
      suggested_prompts: ["Tell me a story about a lighthouse keeper", "What can you do?"]
  console/grounded:
    provider: fake
    model: echo
    knowledge: {collection: support, top_k: 2}
    console:
      suggested_prompts: ["How do I reset my password?"]
  console/guarded:
    provider: fake
    model: echo
    guardrails:
      input:
        - denylist: {words: [forbidden-topic], action: block, name: topics}
        - regex: {patterns: {ORDER_ID: 'ORD-\d{6}'}, action: redact}
"""


def ingest_faq(workdir: Path) -> None:
    """The support FAQ into collection `support`, as a user would: `keel ingest`."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "keel", "ingest", str(ROOT / "examples" / "support-bot" / "faq"),
         "--collection", "support", "--config", "keel.yaml"],
        cwd=workdir, check=True, capture_output=True, timeout=300,
    )


@pytest.fixture(scope="session")
def console_site_dir(tmp_path_factory) -> Path:
    """The working directory of `console_site`: its keel.yaml and keel.db, for CLI commands
    (`keel eval run`, `keel eval dataset import`) that write into the same store."""
    workdir = tmp_path_factory.mktemp("console-site")
    (workdir / "keel.yaml").write_text(CONSOLE_CONFIG)
    ingest_faq(workdir)
    return workdir


@pytest.fixture(scope="session")
def console_site(console_site_dir):
    """Base URL (no /v1) of a `keel serve` with CONSOLE_CONFIG, auth off, the FAQ ingested."""
    from tests.servers import keel_server

    with keel_server(console_site_dir, CONSOLE_CONFIG) as base:
        yield base.removesuffix("/v1")


def pytest_collection_modifyitems(config, items):
    """Browser tests run last. Playwright's sync API keeps its event loop marked as running in
    the main thread while the browser is open (for the session), and pytest-asyncio cannot start
    a test's loop inside it: any async test after the first browser test would fail at setup."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture
def page(chromium, console_site):
    """A fresh browser page (1280×900) on the console site; closed after the test."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=console_site)
    page = context.new_page()
    yield page
    context.close()
