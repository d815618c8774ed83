"""The `topics` guard on the real MiniLM: allowed and denied topics, and its labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from keel.guardrails.base import GuardContext
from keel.guardrails.topics import TopicsGuard, TopicsOptions

DATA = Path(__file__).parent.parent / "data" / "guardrails" / "topics-support.jsonl"
# The configuration docs/guards/topics.md measures.
SUPPORT = {
    "allowed": [
        {"description": "setting up and configuring a wifi router",
         "examples": ["How do I set up port forwarding?", "How do I change my network name?"]},
        {"description": "troubleshooting wifi and internet connection problems",
         "examples": ["My internet connection is slow", "My phone won't connect to the wifi"]},
        {"description": "Acme router orders, warranty, returns and compatibility",
         "examples": ["Can I get a refund for my router?"]},
    ],
    "denied": ["politics, elections and government policy",
               "medical advice, symptoms, medicines and health"],
    "refusal": "I can only help with Acme routers.",
}


class Runtime:
    def __init__(self, embedder):
        self._embedder = embedder
        self.asked: list[str] = []

    async def embedder(self, name):
        self.asked.append(name)
        return self._embedder


async def guard(minilm, **options) -> TopicsGuard:
    runtime = Runtime(minilm)
    made = TopicsGuard("topics", TopicsOptions(**options), runtime)
    await made.start()
    return made


def ctx(runtime=None) -> GuardContext:
    return GuardContext("input", {}, runtime, {})


async def test_on_topic_passes_and_off_topic_blocks(minilm):
    g = await guard(minilm, **SUPPORT)
    ok = await g.check("My router keeps dropping the wifi connection, what can I do?", ctx())
    assert ok.action == "pass" and ok.scores["allowed"] >= 0.3
    off = await g.check("What's a good recipe for lasagna?", ctx())
    assert off.action == "block"
    assert off.scores["allowed"] < 0.3
    assert "off topic" in off.reasons[0]


async def test_denied_topic_is_named(minilm):
    g = await guard(minilm, denied=["politics, elections and government policy"],
                    denied_threshold=0.3)
    verdict = await g.check("Who should I vote for in the next election?", ctx())
    assert verdict.action == "block"
    assert "politics" in verdict.reasons[0] and verdict.scores["denied"] >= 0.3
    # Only denied topics: anything else passes, there is no "off topic".
    assert (await g.check("How do I bake sourdough bread?", ctx())).action == "pass"


async def test_action_thresholds_and_examples_count(minilm):
    text = "How do I turn off the LEDs on the router at night?"
    plain = await guard(minilm, allowed=["configuring a wifi router"], action="flag")
    score = (await plain.check(text, ctx())).scores["allowed"]
    strict = await guard(minilm, allowed=["configuring a wifi router"], action="flag",
                         allowed_threshold=score + 0.01)
    assert (await strict.check(text, ctx())).action == "flag"
    lenient = await guard(minilm, allowed=["configuring a wifi router"],
                          allowed_threshold=score - 0.01)
    assert (await lenient.check(text, ctx())).action == "pass"
    # A close example phrasing lifts the topic's score.
    with_example = await guard(minilm, allowed=[{
        "description": "configuring a wifi router",
        "examples": ["Can I switch off the lights on my router?"]}])
    assert (await with_example.check(text, ctx())).scores["allowed"] > score + 0.1


async def test_empty_text_passes_and_embedder_is_configurable(minilm):
    runtime = Runtime(minilm)
    g = TopicsGuard("topics", TopicsOptions(allowed=["routers"], embedder="other"), runtime)
    assert (await g.check("   ", ctx())).action == "pass"  # starts lazily, then passes
    assert runtime.asked == ["other"]


def test_options_need_a_topic():
    with pytest.raises(ValidationError, match="allowed"):
        TopicsOptions()
    with pytest.raises(ValidationError):
        TopicsOptions(allowed=[{"description": "x", "unknown": 1}])


async def test_labelled_support_set(minilm):
    """The figures in docs/guards/topics.md: precision and recall of 'act' on the set."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert len(rows) == 60 and sum(r["label"] for r in rows) == 30
    g = await guard(minilm, **SUPPORT)
    acted = [(await g.check(r["text"], ctx())).acted for r in rows]
    tp = sum(a and r["label"] for a, r in zip(acted, rows))
    fp = sum(a and not r["label"] for a, r in zip(acted, rows))
    fn = sum(r["label"] and not a for a, r in zip(acted, rows))
    assert tp / (tp + fp) >= 0.9 and tp / (tp + fn) >= 0.9, (tp, fp, fn)
