"""Reciprocal rank fusion against hand-computed numbers."""

from __future__ import annotations

import pytest

from keel.grounding.knowledge.fusion import reciprocal_rank_fusion


def test_rrf_matches_a_hand_computed_case():
    fused = dict(reciprocal_rank_fusion({"fulltext": ["a", "b", "c"], "vector": ["c", "a", "d"]}))
    # a: 1/61 + 1/62, b: 1/62, c: 1/63 + 1/61, d: 1/63
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 63)
    order = [item for item, _ in reciprocal_rank_fusion(
        {"fulltext": ["a", "b", "c"], "vector": ["c", "a", "d"]})]
    assert order == ["a", "c", "b", "d"]


def test_rrf_k_and_weights():
    fused = dict(reciprocal_rank_fusion({"x": ["a"], "y": ["b"]}, k=0, weights={"y": 2.0}))
    assert fused == {"a": 1.0, "b": 2.0}


def test_an_item_in_both_lists_beats_one_at_the_top_of_only_one():
    order = reciprocal_rank_fusion({"x": ["solo", "both"], "y": ["other", "both"]})
    assert order[0][0] == "both"
