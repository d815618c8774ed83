"""The distillation demo's prompt sets and graders (bench/distill.py, bench/data/distill/): the
held-out questions stay out of training, every key fact is one the FAQ states, and the two
python graders the demo filters and scores with do what they say."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data" / "distill"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_bench", ROOT / "bench" / "distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sets(bench):
    return bench.load_jsonl(DATA / "train-prompts.jsonl"), bench.load_jsonl(DATA / "heldout.jsonl")


def faq_text() -> str:
    text = " ".join(p.read_text() for p in (ROOT / "examples" / "support-bot" / "faq").glob("*.md"))
    return re.sub(r"\s+", " ", text.replace("**", "")).lower()


def test_held_out_questions_are_not_training_questions(bench, sets):
    train, heldout = sets
    assert len(train) >= 100 and len(heldout) == 27
    bench.check_no_overlap(train, heldout)
    closeness = bench.nearest_train_cosines(train, heldout)
    assert closeness["max"] < 0.95


def test_refuses_a_held_out_question_seen_in_training(bench, sets):
    train, heldout = sets
    leaked = [*train, {"id": "leak", "input": heldout[0]["input"].upper() + "!"}]
    with pytest.raises(SystemExit, match="also in the training prompts"):
        bench.check_no_overlap(leaked, heldout)


def test_every_key_fact_is_stated_in_the_faq(sets):
    faq = faq_text()
    for row in [*sets[0], *sets[1]]:
        facts = row["metadata"].get("facts")
        assert facts, f"{row['id']} has no facts"
        for fact in facts:
            assert any(alt.strip().lower() in faq for alt in fact.split("|")), (row["id"], fact)


def test_key_facts_grader(bench):
    sample = SimpleNamespace(metadata={"facts": ["30 days", "Visa|SEPA"]})
    both = bench.key_facts(sample, SimpleNamespace(text="Within 30 DAYS; we take sepa."))
    half = bench.key_facts(sample, SimpleNamespace(text="Within 30 days."))
    none = bench.key_facts(SimpleNamespace(metadata={}), SimpleNamespace(text="30 days"))
    assert (both["score"], both["passed"]) == (1.0, True)
    assert (half["score"], half["passed"]) == (0.5, True)
    assert none["score"] == 0.0 and none["label"] == "__no_facts__"


@pytest.mark.parametrize("text, plain", [
    ("Open Settings > Billing > Invoices.", True),
    ("The sources you provided are not accurate.", False),
    ("Use Replace card [1].", False),
    ("Run this:\n```python\nprint(1)\n```", False),
    ("See https://acme.example/help.", False),
    ("As a chatbot I cannot do that.", False),
    ("A resource for admins is the Members page.", True),
])
def test_plain_answer_grader(bench, text, plain):
    assert bench.plain_answer(None, SimpleNamespace(text=text))["passed"] is plain
