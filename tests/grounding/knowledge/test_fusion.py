"""Fusion (reciprocal rank and convex combination) against hand-computed numbers."""

from __future__ import annotations

import pytest

from keel.grounding.knowledge.fusion import (
    convex_fusion,
    min_max,
    reciprocal_rank_fusion,
)


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


def test_convex_fusion_matches_a_hand_computed_case():
    # Both min-max normalised over the candidates: bm25' a 1, b 0.5, c 0, d (vector only) 0;
    # cosine' a 0, b 0.5, c 1, d 0.75.
    fulltext = {"a": 9.0, "b": 6.0, "c": 3.0}
    cosine = {"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.7}
    fused = convex_fusion(fulltext, cosine, alpha=0.6)
    assert dict(fused) == pytest.approx({"a": 0.4, "b": 0.5, "c": 0.6, "d": 0.45})
    assert [item for item, _ in fused] == ["c", "b", "d", "a"]
    assert [item for item, _ in convex_fusion(fulltext, cosine, alpha=1.0)] == [
        "c", "d", "b", "a"]  # all cosine
    assert [item for item, _ in convex_fusion(fulltext, cosine, alpha=0.0)][:2] == ["a", "b"]


def test_convex_fusion_scores_every_candidate_and_only_those():
    # Every item of `cosine` is a candidate, even with no full-text score; a full-text item
    # without a cosine is not (the caller gives every candidate its cosine).
    fused = dict(convex_fusion({"a": 1.0, "z": 0.5}, {"a": 0.1, "b": 0.9}, alpha=0.8))
    assert fused == pytest.approx({"a": 0.2, "b": 0.8})
    assert convex_fusion({}, {"x": 0.3}, alpha=0.8) == [("x", pytest.approx(0.8))]
    assert convex_fusion({}, {}) == []


def test_min_max():
    assert min_max({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert min_max({"a": 5.0}) == {"a": 1.0}  # one score (or all equal): all at the top
    assert min_max({}) == {}
