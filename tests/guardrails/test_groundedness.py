"""The `groundedness` guard on the real MiniLM: sentences against the retrieved passages."""

from __future__ import annotations

import json
from pathlib import Path


from keel.guardrails.base import GuardContext
from keel.guardrails.groundedness import (
    GroundednessGuard,
    GroundednessOptions,
    sentences,
)
from keel.pipeline.context import Route
from keel.providers.fake import FakeProvider

DATA = Path(__file__).parent.parent / "data" / "guardrails"
PASSAGES = json.loads((DATA / "groundedness-passages.json").read_text())
SUPPORTED = "Firmware updates install automatically at night [2]."
OFF_SOURCE = "The AX3000 supports Wi-Fi 7 and speeds up to 10 Gbps."


class Runtime:
    def __init__(self, embedder):
        self._embedder = embedder

    async def embedder(self, name):
        return self._embedder


def guard(minilm, **options) -> GroundednessGuard:
    return GroundednessGuard("groundedness", GroundednessOptions(**options), Runtime(minilm))


def ctx(sources=PASSAGES, route=None) -> GuardContext:
    state = {} if sources is None else {"knowledge.sources": sources}
    return GuardContext("output", {}, None, state, route)


def test_sentences_split_and_drop_citations():
    text = 'Hold it 10 s [1]. Then wait! Is it on? "Yes," it said.\nDone [1], [2]'
    assert sentences(text) == ["Hold it 10 s.", "Then wait!", "Is it on?", '"Yes," it said.',
                               "Done"]
    assert sentences("Version 1.2 is out. Use v2.") == ["Version 1.2 is out.", "Use v2."]


async def test_supported_answer_passes(minilm):
    verdict = await guard(minilm).check(f"Sure. {SUPPORTED}", ctx())
    assert verdict.action == "pass"
    assert verdict.scores["sentences"] == 1  # "Sure." is too short to check
    assert verdict.scores["min_support"] >= 0.6


async def test_unsupported_sentence_is_flagged_by_name(minilm):
    verdict = await guard(minilm).check(f"{SUPPORTED} {OFF_SOURCE}", ctx())
    assert verdict.action == "flag"
    assert len(verdict.reasons) == 1 and OFF_SOURCE in verdict.reasons[0]
    assert verdict.scores["unsupported"] == 1 and verdict.scores["sentences"] == 2


async def test_repair_explains_which_sentences(minilm):
    verdict = await guard(minilm, action="repair").check(f"{OFF_SOURCE} {SUPPORTED}", ctx())
    assert verdict.action == "repair"
    assert f"- {OFF_SOURCE}" in verdict.text and "Firmware" not in verdict.text


async def test_no_sources_passes_and_says_so(minilm):
    for sources in (None, [], ["  "]):
        verdict = await guard(minilm, action="block").check(OFF_SOURCE, ctx(sources))
        assert verdict.action == "pass"
        assert verdict.reasons == ["no sources on the request: nothing to check"]


async def test_judge_decides_borderline_sentences(minilm):
    text = "To restore defaults, press and hold the small button at the back until it flashes."
    plain = await guard(minilm).check(text, ctx())
    assert plain.action == "flag"  # a paraphrase below the threshold
    score = plain.scores["min_support"]
    provider = FakeProvider()
    yes = Route("m", "fake", provider, "fixed:Yes.")
    no = Route("m", "fake", provider, "fixed:No")
    near = {"judge": True, "judge_margin": 0.6 - score + 0.01}
    assert (await guard(minilm, **near).check(text, ctx(route=yes))).action == "pass"
    assert (await guard(minilm, **near).check(text, ctx(route=no))).action == "flag"
    # Too far below the threshold: the judge is not asked (an erroring model would fail it).
    far = {"judge": True, "judge_margin": 0.6 - score - 0.01}
    failing = Route("m", "fake", provider, "error-500")
    assert (await guard(minilm, **far).check(text, ctx(route=failing))).action == "flag"


async def test_labelled_set(minilm):
    """The figures in docs/guards/groundedness.md."""
    rows = [json.loads(line) for line in (DATA / "groundedness.jsonl").read_text().splitlines()]
    g, shared = guard(minilm), ctx()
    acted = [(await g.check(r["text"], shared)).acted for r in rows]
    tp = sum(a and r["label"] for a, r in zip(acted, rows))
    fp = sum(a and not r["label"] for a, r in zip(acted, rows))
    fn = sum(r["label"] and not a for a, r in zip(acted, rows))
    # Measured: 10 caught, 2 false alarms, 8 missed (mostly sentences that contradict a passage
    # in its own words, which similarity cannot tell from support).
    assert tp >= 9 and fp <= 3 and fn <= 9, (tp, fp, fn)
    assert "groundedness.passages" in shared.state  # passages embedded once for the set
