"""The `secrets` guard: finds provider API keys, tokens, private keys and high-entropy strings in
requests (blocked by default: a key pasted into a prompt should not reach a provider's logs) and
in answers (where `redact` is the usual choice).

The provider patterns are those of Yelp's detect-secrets plugins (AWS, GitHub, Slack, Stripe,
OpenAI, JWT, private keys, basic auth, SendGrid, PyPI, npm...), completed with the formats it
lacks (Anthropic, Google API keys, GitHub fine-grained tokens, GitLab, Hugging Face, bearer
tokens), compiled once into plain `re` patterns. We do not call detect-secrets itself on the
request path: it scans line by line for source files, reports values rather than spans, and took
~15 ms on a 2 KB prompt (docs/guards/secrets.md); tests/guardrails/test_secrets.py checks that
its plugins agree with these patterns on the samples.

The generic detector flags long tokens whose Shannon entropy per character reaches a threshold,
as detect-secrets' high-entropy plugins do, but only tokens that mix upper case, lower case and
digits the way random characters do: UUIDs, commit hashes and other hexadecimal identifiers are
ids, not secrets, CamelCase identifiers are words, and both are left alone (a hex key is still
caught when assigned to a key-like name: `api_key = "..."`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from keel.guardrails.base import GuardContext, GuardOptions, Match, Verdict, verdict_from_matches
from keel.guardrails.pii import resolve_overlaps

# label -> pattern; where a pattern has a group, the group is the secret (the rest is context).
PATTERNS: dict[str, re.Pattern[str]] = {
    "PRIVATE_KEY": re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        # an unterminated block (a stream cut it, a truncated paste) is masked to the end
        r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"),
    "AWS_ACCESS_KEY_ID": re.compile(r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}"
                                    r"(?![A-Z0-9])"),
    "AWS_SECRET_KEY": re.compile(
        r"(?i)aws.{0,20}?(?:key|pwd|pw|password|pass|token).{0,20}?['\"]([0-9a-zA-Z/+]{40})['\"]"),
    "ANTHROPIC_KEY": re.compile(r"\bsk-ant-(?:api|admin|oat)\d{2}-[A-Za-z0-9_-]{32,}"),
    "OPENAI_KEY": re.compile(
        r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]{16,}"
        r"|\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}"),
    "GITHUB_TOKEN": re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{36}\b"
                               r"|\bgithub_pat_[A-Za-z0-9_]{60,}"),
    "GITLAB_TOKEN": re.compile(r"\b(?:glpat|gldt|glft|glsoat|glrt)-[A-Za-z0-9_-]{20,50}(?![\w-])"),
    "SLACK_TOKEN": re.compile(
        r"(?i)\bxox(?:a|b|p|o|s|r)-(?:\d+-)+[a-z0-9]+(?:-[a-z0-9]+)*"
        r"|https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
    "STRIPE_KEY": re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{24,99}\b"),
    "GOOGLE_API_KEY": re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])"),
    "HUGGINGFACE_TOKEN": re.compile(r"\bhf_[A-Za-z]{34}\b"),
    "SENDGRID_KEY": re.compile(r"\bSG\.[a-zA-Z0-9_-]{22}\.[a-zA-Z0-9_-]{43}(?![\w-])"),
    "PYPI_TOKEN": re.compile(r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{70,}"),
    "AZURE_STORAGE_KEY": re.compile(r"AccountKey=([a-zA-Z0-9+/=]{88})"),
    "SQUARE_OAUTH_SECRET": re.compile(r"\bsq0csp-[0-9A-Za-z_-]{43}"),
    "NPM_TOKEN": re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "BEARER_TOKEN": re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)"),
    "BASIC_AUTH": re.compile(r"\b[a-z][a-z0-9+.-]*://[^:/?#@\s]+:([^@/?#\s]{3,})@"),
    "SECRET_ASSIGNMENT": re.compile(
        r"(?i)(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|client[_-]?secret"
        r"|passw(?:or)?d|pwd)[\"']?\s*[:=]\s*[\"']([^\s\"']{8,})[\"']"),
}
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
# The longest secret a stream must be able to hold whole before it is released: provider keys
# are under ~200 characters; longer JWTs and private-key bodies split across chunks are caught
# by the entropy detector line by line, or by the BEGIN header (documented).
HOLDBACK = 256


class SecretsOptions(GuardOptions):
    action: Literal["block", "redact", "pseudonymize", "flag"] = "block"
    # Which labels to look for; all of them by default (HIGH_ENTROPY is the generic detector).
    kinds: list[str] | None = None
    # The generic detector: tokens of at least `min_length` characters that mix upper case,
    # lower case and digits like random characters do, and whose Shannon entropy (bits per
    # character) reaches `entropy_threshold` (random base62: 3.9 at 24 characters, 4.3 at 32,
    # at the 1st percentile). Set the threshold to 0 to turn it off.
    entropy_threshold: float = Field(3.7, ge=0, le=8)
    min_length: int = Field(24, ge=8)
    holdback: int = HOLDBACK

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str] | None) -> list[str] | None:
        unknown = set(kinds or ()) - set(PATTERNS) - {"HIGH_ENTROPY"}
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: "
                             f"{', '.join(sorted(PATTERNS))} and HIGH_ENTROPY")
        return kinds


class SecretsGuard:
    kind: ClassVar[str] = "secrets"
    Options: ClassVar[type[GuardOptions]] = SecretsOptions

    def __init__(self, name: str, options: SecretsOptions, runtime: Any = None) -> None:
        self.name = name
        self.options = options
        self.holdback = options.holdback
        kinds = set(options.kinds) if options.kinds is not None else None
        self._patterns = [(label, p) for label, p in PATTERNS.items()
                          if kinds is None or label in kinds]
        self._entropy = options.entropy_threshold > 0 and (kinds is None or "HIGH_ENTROPY" in kinds)

    def find(self, text: str) -> list[Match]:
        found = []
        for label, pattern in self._patterns:
            for m in pattern.finditer(text):
                g = 1 if pattern.groups else 0
                if label == "JWT" and not _jwt_header(m.group()):
                    continue
                found.append(Match(m.start(g), m.end(g), label))
        if self._entropy:
            # a named kind says more than "high entropy" about the same characters
            found.extend(m for m in self._high_entropy(text)
                         if all(m.end <= k.start or m.start >= k.end for k in found))
        return resolve_overlaps(found)

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        return verdict_from_matches(self, self.find(text))

    def _high_entropy(self, text: str) -> list[Match]:
        out = []
        for m in TOKEN.finditer(text):
            token = m.group().rstrip("=")
            if (len(token) >= self.options.min_length and _looks_random(token)
                    and entropy(token) >= self.options.entropy_threshold):
                out.append(Match(m.start(), m.end(), "HIGH_ENTROPY", round(entropy(token), 2)))
        return out


def entropy(token: str) -> float:
    """Shannon entropy in bits per character, as detect-secrets computes it."""
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _looks_random(token: str) -> bool:
    """Mixes upper case, lower case and digits, switching between them as often as random
    characters do (about 6 times in 10 for base62; never under 4 in 10 past 32 characters),
    where a CamelCase identifier switches once a word (under 4 in 10)."""
    upper = lower = digits = switches = 0
    last = ""
    for c in token:
        kind = "u" if c.isupper() else "l" if c.islower() else "d" if c.isdigit() else "o"
        upper += kind == "u"
        lower += kind == "l"
        digits += kind == "d"
        switches += kind != last
        last = kind
    return upper > 0 and lower > 0 and digits >= 2 and (switches - 1) / (len(token) - 1) >= 0.4


def _jwt_header(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        return base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).lstrip().startswith(b"{")
    except (binascii.Error, ValueError):
        return False
