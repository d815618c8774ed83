"""The `secrets` guard: each kind of key and token found with its span, ordinary code, UUIDs and
hashes left alone, the entropy threshold, and agreement with detect-secrets' plugins.

Key-shaped strings are built at run time from seeded random characters, so none sits in the
repository for secret scanners to trip on.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import json
import random
import socket
import string
import time
import uuid

import pytest
from pydantic import ValidationError

from keel.guardrails.base import GuardContext
from keel.guardrails.registry import GuardSpec, guard_class
from keel.guardrails.secrets import PATTERNS, SecretsGuard, SecretsOptions, entropy

rng = random.Random(9)
ALNUM = string.ascii_letters + string.digits


def rnd(n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = ".".join([b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": "1234567890", "n": "x"}),
                rnd(43, ALNUM + "-_")])
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + rnd(58, ALNUM + "+/") + "\n"
       + rnd(64, ALNUM + "+/") + "\n-----END RSA PRIVATE KEY-----")
# (text, label, the secret); the secret is text's only finding.
SAMPLES = [
    ("aws_access_key_id = " + "AKIA" + rnd(16, string.ascii_uppercase + string.digits),
     "AWS_ACCESS_KEY_ID", None),
    ('aws_secret_access_key: "' + rnd(40, ALNUM + "/+") + '"', "AWS_SECRET_KEY", "group"),
    ("export OPENAI_API_KEY=sk-proj-" + rnd(40) + "T3BlbkFJ" + rnd(40), "OPENAI_KEY", "sk-"),
    ("key sk-" + rnd(48) + " please", "OPENAI_KEY", "sk-"),
    ("ANTHROPIC_API_KEY=sk-ant-api03-" + rnd(93, ALNUM + "-_") + "AA", "ANTHROPIC_KEY", "sk-"),
    ("token ghp_" + rnd(36) + " expired", "GITHUB_TOKEN", "ghp_"),
    ("use github_pat_" + rnd(22) + "_" + rnd(59), "GITHUB_TOKEN", "github_pat_"),
    ("glpat-" + rnd(20, ALNUM + "_-") + " in CI", "GITLAB_TOKEN", "glpat-"),
    ("slack xoxb-" + rnd(11, string.digits) + "-" + rnd(13, string.digits) + "-"
     + rnd(24, string.ascii_lowercase + string.digits), "SLACK_TOKEN", "xoxb-"),
    ("hook https://hooks.slack.com/services/T" + rnd(8) + "/B" + rnd(8) + "/" + rnd(24),
     "SLACK_TOKEN", "https://"),
    ("stripe sk_live_" + rnd(24), "STRIPE_KEY", "sk_live_"),
    ("stripe rk_test_" + rnd(99), "STRIPE_KEY", "rk_test_"),
    ("maps key AIza" + rnd(35, ALNUM + "_-") + ".", "GOOGLE_API_KEY", "AIza"),
    ("HF_TOKEN=hf_" + rnd(34, string.ascii_letters), "HUGGINGFACE_TOKEN", "hf_"),
    ("SG." + rnd(22) + "." + rnd(43), "SENDGRID_KEY", "SG."),
    ("password pypi-AgEIcHlwaS5vcmc" + rnd(80, ALNUM + "-_"), "PYPI_TOKEN", "pypi-"),
    ("npm_" + rnd(36) + " in .npmrc", "NPM_TOKEN", "npm_"),
    ("DefaultEndpointsProtocol=https;AccountKey=" + rnd(86, ALNUM + "+/") + "==;",
     "AZURE_STORAGE_KEY", "group"),
    ("sq0csp-" + rnd(43, ALNUM + "-_"), "SQUARE_OAUTH_SECRET", "sq0csp-"),
    ("cookie " + JWT + " sent", "JWT", "eyJ"),
    ("curl -H 'Authorization: Bearer " + rnd(32, string.ascii_lowercase) + "'", "BEARER_TOKEN",
     "group"),
    ("postgres://admin:" + rnd(12) + "@db.internal:5432/app", "BASIC_AUTH", "group"),
    ('config = {"api_key": "' + rnd(32, "0123456789abcdef") + '"}', "SECRET_ASSIGNMENT", "group"),
    ("my key is " + PEM + " ok", "PRIVATE_KEY", "-----"),
    ("random " + rnd(40) + " token", "HIGH_ENTROPY", None),
]


def guard(**options) -> SecretsGuard:
    return SecretsGuard("secrets", SecretsOptions(**options))


@pytest.mark.parametrize("text, label, start", SAMPLES,
                         ids=[f"{i}-{s[1]}" for i, s in enumerate(SAMPLES)])
def test_each_kind_is_found_with_its_span(text, label, start):
    matches = guard().find(text)
    assert [m.label for m in matches] == [label]
    value = text[matches[0].start:matches[0].end]
    if start == "group":  # only the secret is masked, not the name before it
        assert value == PATTERNS[label].search(text).group(1)
        assert not any(c in value for c in " '\":@")
    elif start is not None:
        assert value.startswith(start)
    assert value.strip() == value and len(value) >= 20 or label == "BASIC_AUTH"
    if label == "PRIVATE_KEY":
        assert value == PEM


def test_every_pattern_is_exercised():
    assert {label for _, label, _ in SAMPLES} == set(PATTERNS) | {"HIGH_ENTROPY"}


@pytest.mark.parametrize("text", [
    "request id " + str(uuid.UUID(int=rng.getrandbits(128))),
    "commit 3f786850e387550fdab836ed7e6dc881de23001b and sha256 " + rnd(64, "0123456789abcdef"),
    "def getUserAccountSettings(self): return self._userAccountSettings2",
    "config.max_position_embeddings = 4096; model = AutoModelForCausalLM.from_pretrained(path)",
    "import org.springframework.boot.autoconfigure.SpringBootApplication;",
    "https://example.com/docs/getting-started/installation-guide.html",
    "password = os.environ['DB_PASSWORD']  # read from the environment",
    "token = request.headers.get('Authorization')",
    "The bearer of this letter is my colleague.",
    "path /usr/local/lib/python3.11/site-packages/keel/guardrails/secrets.py",
    "task-ask-for-a-refund-in-the-support-portal-2024",
    "eyJhbGciOiJIUzI1NiJ9 alone is a header, not a token",
])
def test_ordinary_text_code_and_ids_are_not_secrets(text):
    assert guard().find(text) == []


def test_entropy_threshold_and_kinds_options():
    token = rnd(32)
    text = f"value {token} here"
    assert entropy(token) > 4.0
    assert [m.label for m in guard().find(text)] == ["HIGH_ENTROPY"]
    assert guard(entropy_threshold=0).find(text) == []  # the generic detector off
    assert guard(entropy_threshold=5.5).find(text) == []  # above what 32 characters can reach
    assert guard(min_length=40).find(text) == []
    only_aws = guard(kinds=["AWS_ACCESS_KEY_ID"])
    assert only_aws.find(text) == [] and only_aws.find(SAMPLES[0][0])
    with pytest.raises(ValidationError, match="unknown kinds"):
        SecretsOptions(kinds=["AWS_KEY"])


def test_random_tokens_are_caught_and_words_are_not():
    # Recall of the generic detector on random 24- and 32-character base62 tokens, and
    # precision on long CamelCase identifiers (which mix cases and digits too).
    g, r = guard(), random.Random(2026)
    caught = sum(bool(g.find(f"x {''.join(r.choices(ALNUM, k=n))} y"))
                 for n in (24, 32) for _ in range(200))
    assert caught / 400 >= 0.9  # measured 0.905 at 24 characters, 0.96 at 32 (2,000 each)
    words = ["Account", "Settings", "Manager", "Factory", "Provider", "Handler", "Service", "Impl",
             "Abstract", "Default", "Request", "Response", "Builder", "Config", "V2", "2024"]
    identifiers = ["".join(r.sample(words, 5)) + str(r.randrange(100)) for _ in range(200)]
    flagged = [i for i in identifiers if g.find(i)]
    assert len(flagged) <= 4, flagged


async def test_blocks_by_default_and_loads_from_keel_yaml():
    ctx = GuardContext(stage="input", body={}, runtime=None, state={})
    verdict = await guard().check(SAMPLES[5][0], ctx)
    assert (verdict.action, verdict.reasons) == ("block", ["found GITHUB_TOKEN"])
    assert not (await guard().check("nothing secret", ctx)).acted
    spec = GuardSpec.model_validate({"secrets": {"action": "redact", "entropy_threshold": 4.2}})
    assert guard_class(spec.kind) is SecretsGuard
    g = SecretsGuard("secrets", spec.options)
    assert g.options.action == "redact" and g.holdback >= 200


def test_detect_secrets_plugins_agree():
    # Our patterns come from detect-secrets' plugins; where a plugin covers a kind, it finds
    # the same secret in the same sample.
    plugins = {
        "AWS_ACCESS_KEY_ID": "aws:AWSKeyDetector", "AWS_SECRET_KEY": "aws:AWSKeyDetector",
        "GITHUB_TOKEN": "github_token:GitHubTokenDetector",
        "GITLAB_TOKEN": "gitlab_token:GitLabTokenDetector", "SLACK_TOKEN": "slack:SlackDetector",
        "STRIPE_KEY": "stripe:StripeDetector", "SENDGRID_KEY": "sendgrid:SendGridDetector",
        "PYPI_TOKEN": "pypi_token:PypiTokenDetector", "JWT": "jwt:JwtTokenDetector",
        "BASIC_AUTH": "basic_auth:BasicAuthDetector",
        "PRIVATE_KEY": "private_key:PrivateKeyDetector", "OPENAI_KEY": "openai:OpenAIDetector",
    }
    checked = 0
    for text, label, _ in SAMPLES:
        name = plugins.get(label)
        if name is None or "rk_test_" in text or ("OPENAI" in label and "T3BlbkFJ" not in text) \
                or "github_pat_" in text:
            continue  # formats detect-secrets 1.5 does not know (test keys, new token formats)
        module, _, cls = name.partition(":")
        plugin = getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls)
        ours = guard().find(text)[0]
        theirs = list(plugin().analyze_string(text))
        assert theirs, (label, text)
        assert any(t in text[ours.start:ours.end] or text[ours.start:ours.end] in t
                   for t in theirs), (label, theirs)
        checked += 1
    assert checked >= 12


def test_find_is_pure_and_fast(monkeypatch):
    g = guard()
    text = " ".join(t for t, _, _ in SAMPLES)
    expected = g.find(text)
    assert len(expected) == len(SAMPLES)

    def no_io(*args, **kwargs):
        raise AssertionError("find() did I/O")

    monkeypatch.setattr(builtins, "open", no_io)
    monkeypatch.setattr(socket, "socket", no_io)
    start = time.perf_counter()
    for _ in range(50):
        assert g.find(text) == expected
    # ~0.5 ms a call measured on 2 KB; 20 ms only catches a pathological (backtracking) regex.
    assert (time.perf_counter() - start) / 50 < 0.02


async def test_a_key_in_a_request_is_blocked_and_one_in_an_answer_redacted(serve, session):
    key = SAMPLES[5][0]  # "token ghp_... expired"
    body = {"model": "bot", "messages": [{"role": "user", "content": key}]}
    base, _ = await serve({"input": [{"secrets": {}}]})
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        payload = await r.json()
        assert r.status == 400
    assert payload["error"]["code"] == "guardrail_blocked"
    assert "ghp_" not in payload["error"]["message"]

    base, _ = await serve({"output": [{"secrets": {"action": "redact"}}]})
    async with session.post(f"{base}/v1/chat/completions", json=body) as r:
        payload = await r.json()
        assert r.status == 200, payload
    assert payload["choices"][0]["message"]["content"] == "token [GITHUB_TOKEN] expired"
