"""compare: paired bootstrap intervals, a seeded regression found, variants paired."""

from __future__ import annotations

import random

import pytest

from keel.errors import InvalidRequest
from keel.evals.compare import compare, grader_stats, pair_variants


def _cells(variant: str, scores: dict[str, float], repeat: int = 0) -> list[dict]:
    return [{"variant": variant, "sample_id": sid, "repeat": repeat, "error": None,
             "output": {"text": f"answer to {sid}"},
             "grades": {"fact": {"score": s, "passed": s >= 1, "label": None}}}
            for sid, s in scores.items()]


def test_a_seeded_regression_is_found_and_nothing_else():
    rng = random.Random(7)
    before = {f"s{i}": float(rng.random() < 0.8) for i in range(200)}
    after = dict(before)
    hurt = [s for s, v in before.items() if v == 1.0][:30]
    for sid in hurt:
        after[sid] = 0.0
    (pair,) = compare(_cells("v", before), _cells("v", after), [("v", "v")])
    assert sorted(e["sample_id"] for e in pair["regressed"]) == sorted(hurt)
    assert pair["improved"] == []
    stats = pair["graders"]["fact"]
    assert stats["n"] == 200
    assert stats["diff"] == pytest.approx(-30 / 200)
    low, high = stats["ci_diff"]
    assert low <= stats["diff"] <= high < 0  # the drop is outside the noise
    assert pair["regressed"][0]["output_a"] == pair["regressed"][0]["output_b"]


def test_intervals_are_seeded_and_contain_the_mean():
    a = {f"s{i}": float(i % 2) for i in range(50)}
    b = {f"s{i}": float(i % 3 == 0) for i in range(50)}
    first, again = grader_stats(a, b), grader_stats(a, b)
    assert first == again
    assert first["ci_a"][0] <= first["mean_a"] <= first["ci_a"][1]
    assert grader_stats(a, b, seed=1) != first


def test_repeats_average_and_improvements():
    a = _cells("v", {"x": 0.0, "y": 1.0}) + _cells("v", {"x": 1.0, "y": 1.0}, repeat=1)
    b = _cells("w", {"x": 1.0, "y": 1.0})
    (pair,) = compare(a, b, [("v", "w")])
    assert [e["sample_id"] for e in pair["improved"]] == ["x"]
    assert pair["improved"][0]["scores_a"] == {"fact": 0.5}


def test_pairing_variants():
    assert pair_variants(["a", "b"], ["b", "c"]) == [("b", "b")]
    assert pair_variants(["a"], ["z"]) == [("a", "z")]
    assert pair_variants(["a", "b"], ["a", "b"], "a", "b") == [("a", "b")]
    with pytest.raises(InvalidRequest, match="share no variant"):
        pair_variants(["a", "b"], ["c", "d"])
    with pytest.raises(InvalidRequest, match="no variant 'q'"):
        pair_variants(["a"], ["a"], "q")
