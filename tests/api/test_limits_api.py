"""Rate limits, budgets and usage through HTTP, on a real `keel serve` with the fake provider.

Without auth, the model's own limit (`models.X.limits`) applies to every caller; with
KEEL_ADMIN_KEY set, keys created through POST /v1/keys carry their own limits and budgets, and
their team's budget (`limits.teams`). Every answer carries OpenAI's x-ratelimit-* headers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.servers import http, keel_server

ADMIN = "sk-admin-test-limits"
CONFIG = """
providers:
  fake: {kind: fake}
embedders:
  minilm: {kind: fake}
models:
  limited:
    provider: fake
    model: echo
    limits: {rpm: 3}
    pricing: {input: 1000, output: 1000}
  priced:
    provider: fake
    model: echo
    pricing: {input: 1000, output: 1000}
limits:
  teams:
    ops: {budget_usd: 0.005, period: day}
"""
# Five words in, five out with the echo fake: 10 tokens at $0.001 each = $0.01 a request.
HELLO = [{"role": "user", "content": "one two three four five"}]


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits-open")
    with keel_server(workdir, CONFIG, env={"KEEL_ADMIN_KEY": ""}) as url:
        yield workdir, url


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits-keys")
    with keel_server(workdir, CONFIG, env={"KEEL_ADMIN_KEY": ADMIN}) as url:
        yield workdir, url


def chat(url, model, key=None, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http("POST", f"{url}/chat/completions",
                {"model": model, "messages": HELLO, **extra}, headers)


def stream(url, model, key=None):
    """A streamed chat completion: (status, headers, the raw SSE text)."""
    request = urllib.request.Request(
        f"{url}/chat/completions", method="POST",
        data=json.dumps({"model": model, "messages": HELLO, "stream": True}).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read().decode()


def create_key(url, **fields) -> str:
    status, _, body = http("POST", f"{url}/keys", fields, {"Authorization": f"Bearer {ADMIN}"})
    assert status == 201, body
    return body["secret"]


def usage(workdir, *args) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "keel", "usage", "--config", "keel.yaml",
                             "--json", *args], check=False, cwd=workdir, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_usage(workdir, predicate, *args, timeout=15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = usage(workdir, *args)
        if predicate(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def assert_rate_limited(status, headers, body, limit_type="requests"):
    assert status == 429, body
    assert body["error"]["type"] == limit_type
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["message"].startswith("Rate limit reached for ")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"


# -- the model's own limit, auth off -----------------------------------------------------------


def test_model_rpm_headers_on_chat_and_stream_then_429(open_server):
    workdir, url = open_server
    status, headers, body = chat(url, "limited")
    assert status == 200, body
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in headers  # no tokens limit on this model

    status, headers, text = stream(url, "limited")
    assert status == 200 and text.rstrip().endswith("data: [DONE]")
    assert headers["x-ratelimit-remaining-requests"] == "1"

    status, headers, body = chat(url, "limited")
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "0"

    status, headers, body = chat(url, "limited")  # the 4th in the minute
    assert_rate_limited(status, headers, body)
    assert "on model limited: Limit 3, Used 3, Requested 1" in body["error"]["message"]

    # A model without limits answers without x-ratelimit headers.
    status, headers, _ = chat(url, "priced")
    assert status == 200 and not any(h.lower().startswith("x-ratelimit") for h in headers)

    # What it cost shows in `keel usage`: 4 requests on `limited` (one refused), 3 of them paid.
    rows = wait_for_usage(workdir, lambda rows: sum(r["requests"] for r in rows) >= 5,
                          "--by", "model")
    by_model = {row["model"]: row for row in rows}
    assert by_model["limited"]["requests"] == 4 and by_model["limited"]["errors"] == 1
    assert by_model["limited"]["cost_usd"] == pytest.approx(0.03)
    assert by_model["priced"]["cost_usd"] == pytest.approx(0.01)


# -- keys, auth on -----------------------------------------------------------------------------


def test_key_rpm_on_chat_and_embeddings(keyed_server):
    _, url = keyed_server
    secret = create_key(url, name="rpm-two", rpm=2)
    status, headers, body = chat(url, "priced", secret)
    assert status == 200, body
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"

    status, headers, body = http("POST", f"{url}/embeddings",
                                 {"model": "minilm", "input": ["hello"]},
                                 {"Authorization": f"Bearer {secret}"})
    assert status == 200, body
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"

    status, headers, body = chat(url, "priced", secret)
    assert_rate_limited(status, headers, body)
    assert "on key rpm-two" in body["error"]["message"]

    # Another key is not held back by this one's limit.
    other = create_key(url, name="rpm-other", rpm=2)
    assert chat(url, "priced", other)[0] == 200


def test_key_tpm_refuses_once_the_tokens_are_spent(keyed_server):
    _, url = keyed_server
    secret = create_key(url, name="tpm-five", tpm=5)
    status, headers, _ = chat(url, "priced", secret)  # 10 tokens: past the limit after it
    assert status == 200 and headers["x-ratelimit-limit-tokens"] == "5"
    status, headers, body = chat(url, "priced", secret)
    assert status == 429 and body["error"]["type"] == "tokens", body
    assert int(headers["Retry-After"]) >= 1


def test_key_budget_admits_the_crossing_request_then_insufficient_quota(keyed_server):
    workdir, url = keyed_server
    secret = create_key(url, name="budget", budget_usd=0.015, period="day")
    assert chat(url, "priced", secret)[0] == 200  # $0.01 spent
    assert chat(url, "priced", secret)[0] == 200  # 0.01 < 0.015: admitted, crosses to $0.02
    status, _, body = chat(url, "priced", secret)
    assert status == 429, body
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["code"] == "insufficient_quota"
    assert body["error"]["message"].startswith("You exceeded your current quota on key budget")

    rows = wait_for_usage(workdir, lambda rows: any(
        r["key_name"] == "budget" and r["requests"] == 3 for r in rows), "--by", "key")
    (mine,) = [row for row in rows if row["key_name"] == "budget"]
    assert mine["requests"] == 3 and mine["errors"] == 1
    assert mine["cost_usd"] == pytest.approx(0.02)


def test_team_budget_is_shared_by_its_keys(keyed_server):
    _, url = keyed_server
    first = create_key(url, name="ops-1", metadata={"team": "ops"})
    second = create_key(url, name="ops-2", metadata={"team": "ops"})
    assert chat(url, "priced", first)[0] == 200  # $0.01: the team's $0.005 is spent
    status, _, body = chat(url, "priced", second)
    assert status == 429 and body["error"]["type"] == "insufficient_quota", body
    assert "team ops" in body["error"]["message"]
