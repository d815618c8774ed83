"""Two `keel serve` processes on one database see each other's cache entries: exact entries at
once, semantic ones within `refresh_interval_s` (each process polls the store for new rows)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest

from tests.servers import http, keel_server
from tests.store.backends import POSTGRES_URL, postgres_schema_url

REFRESH_S = 0.5
CONFIG = """
store: {{url: "{db}"}}
providers: {{fake: {{kind: fake}}}}
embedders: {{fake: {{kind: fake}}}}
models:
  bot:
    provider: fake
    model: echo
    cache: {{embedder: fake, verify: false, threshold: 0.9, refresh_interval_s: {refresh}}}
"""


def ask(base_url: str, question: str):
    status, headers, body = http("POST", f"{base_url}/chat/completions", {
        "model": "bot", "temperature": 0, "messages": [{"role": "user", "content": question}]})
    assert status == 200, body
    headers = {k.lower(): v for k, v in headers.items()}
    return headers, body["choices"][0]["message"]["content"]


def shared_entries(db_url: str, tmp_path) -> None:
    with ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            workdir = tmp_path / name
            workdir.mkdir()
            urls.append(stack.enter_context(
                keel_server(workdir, CONFIG.format(db=db_url, refresh=REFRESH_S))))
        a, b = urls
        # B loads the namespace's (so far unrelated) entries before A writes.
        headers, _ = ask(b, "what is the weather in paris today")
        assert headers["x-keel-cache"] == "miss"
        headers, _ = ask(a, "how do I delete my account")
        assert headers["x-keel-cache"] == "miss"
        # A writes the entry just after its answer (off the response path); B reads the keys
        # and vectors others wrote at most every refresh interval: the documented bound.
        time.sleep(REFRESH_S * 3)
        headers, answer = ask(b, "how do I delete my account")  # exact: straight from the store
        assert (headers["x-keel-cache"], headers["x-keel-cache-kind"]) == ("hit", "exact")
        assert answer == "how do I delete my account"
        headers, answer = ask(b, "how do I delete my account please")
        assert (headers["x-keel-cache"], headers["x-keel-cache-kind"]) == ("hit", "semantic")
        assert answer == "how do I delete my account"  # A's answer


def test_two_processes_on_one_sqlite_file_share_entries(tmp_path):
    shared_entries(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path)


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="KEEL_TEST_POSTGRES_URL is not set")
def test_two_processes_on_one_postgresql_share_entries(tmp_path):
    with postgres_schema_url() as url:
        shared_entries(url, tmp_path)
