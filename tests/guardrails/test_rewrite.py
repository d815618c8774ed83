"""The `rewrite` guard: a model rewrites a request that breaks the policy, read tolerantly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keel.errors import UpstreamError
from keel.guardrails.base import GuardContext
from keel.guardrails.rewrite import RewriteGuard, RewriteOptions, parse
from keel.pipeline.context import Route
from keel.providers.fake import FakeProvider

POLICY = "No images in the style of a living artist; no real people's likenesses."
REQUEST = "Draw a cat in the style of a famous living painter"


class Recording:
    """A provider answering one fixed text and keeping what it was asked."""

    def __init__(self, content: str):
        self.content = content
        self.calls: list[tuple[dict, str]] = []

    async def chat(self, body, model):
        self.calls.append((body, model))
        return {"object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": self.content},
             "finish_reason": "stop"}]}


def ctx(provider, model="route-model") -> GuardContext:
    return GuardContext("input", {}, None, {}, Route("m", "p", provider, model))


def guard(**options) -> RewriteGuard:
    return RewriteGuard("rewrite", RewriteOptions(policy=POLICY, **options))


async def test_violating_request_is_rewritten():
    provider = Recording('```json\n{"compliant": false, "rewritten": "Draw a cat in an '
                         'impressionist style"}\n```')
    verdict = await guard().check(REQUEST, ctx(provider))
    assert verdict.action == "rewrite"
    assert verdict.text == "Draw a cat in an impressionist style"
    body, model = provider.calls[0]
    assert model == "route-model" and body["temperature"] == 0
    assert POLICY in body["messages"][0]["content"]
    assert body["messages"][1] == {"role": "user", "content": REQUEST}


async def test_compliant_request_passes_and_model_option_is_used():
    provider = Recording('{"compliant": true, "rewritten": ""}')
    verdict = await guard(model="small-checker").check("Draw a cat", ctx(provider))
    assert verdict.action == "pass" and verdict.text is None
    assert provider.calls[0][1] == "small-checker"


async def test_through_the_fake_provider():
    fixed = 'fixed:Here you go: {"compliant": false, "rewritten": "Draw a cat"} Hope it helps.'
    verdict = await guard().check(REQUEST, ctx(FakeProvider(), fixed))
    assert (verdict.action, verdict.text) == ("rewrite", "Draw a cat")
    # The echo model answers the request itself: not a verdict, so an error for on_error.
    with pytest.raises(UpstreamError, match="cannot read"):
        await guard().check(REQUEST, ctx(FakeProvider(), "echo"))


async def test_no_acceptable_version_blocks_and_unchanged_passes():
    verdict = await guard().check(REQUEST, ctx(Recording('{"compliant": false}')))
    assert verdict.action == "block"
    same = Recording(f'{{"compliant": false, "rewritten": "{REQUEST}"}}')
    assert (await guard().check(REQUEST, ctx(same))).action == "pass"


@pytest.mark.parametrize("answer,expected", [
    ("OK", (True, "")),
    ("ok.", (True, "")),
    ('{"compliant": "false", "rewritten": " x "}', (False, "x")),
    ('Sure!\n{"compliant": true}', (True, "")),
    ('{"compliant": false, "rewritten": 3}', (False, "")),
])
def test_parse_is_tolerant(answer, expected):
    assert parse(answer) == expected


@pytest.mark.parametrize("answer", ["", "I cannot help", '{"rewritten": "x"}', "{broken"])
def test_parse_refuses_what_it_cannot_read(answer):
    with pytest.raises(UpstreamError) as caught:
        parse(answer)
    assert caught.value.code == "guardrail_error"


async def test_errors_without_route_and_options():
    with pytest.raises(UpstreamError, match="no route"):
        await guard().check(REQUEST, GuardContext("input", {}, None, {}))
    with pytest.raises(ValidationError):
        RewriteOptions()
    with pytest.raises(ValidationError):
        RewriteOptions(policy="x", action="repair")
    assert RewriteOptions(policy="x").fails_closed() is False
