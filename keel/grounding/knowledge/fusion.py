"""Fusing the full-text and vector lists into one ranking: by score (default) or by rank.

Convex combination (`convex`, the default):

    score(d) = α · cosine'(d) + (1 − α) · bm25'(d)

over the union of both candidate lists, each score min-max normalised over this query's
candidates (best 1, worst 0). Every candidate has its cosine (a dot product with its stored
vector, whether the vector list found it or not); bm25' is normalised over the full-text list,
and a candidate that list does not hold gets 0 — its real bm25 is no higher than the list's
worst. α = 0.8 and min-max on both were chosen on a tuning split of BoolQ questions disjoint
from the split reported (bench/retrieval.py, docs/knowledge.md). The raw cosine stays in
`Hit.scores["vector"]` for thresholds: the fused score is only an order within one query.

Reciprocal rank fusion (`rrf`): score(d) = Σ_lists weight / (k + rank of d in that list),
ranks from 1; k = 60 is the value from Cormack, Clarke and Büttcher (2009). Ranks alone throw
away how far apart the scores are, and on BoolQ, where vectors are much the stronger method,
RRF with k = 60 lost to vectors alone.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

RRF_K = 60
CONVEX_ALPHA = 0.8
FUSIONS = ("convex", "rrf")


def reciprocal_rank_fusion(
    rankings: dict[str, Sequence[Hashable]],
    *,
    k: int = RRF_K,
    weights: dict[str, float] | None = None,
) -> list[tuple[Hashable, float]]:
    """(item, fused score) best first; ties keep the order items were first seen in."""
    scores: dict[Hashable, float] = {}
    for name, ranking in rankings.items():
        weight = 1.0 if weights is None else weights.get(name, 1.0)
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def min_max(scores: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Scores rescaled to [0, 1] over this set (all 1 when they are all equal)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high <= low:
        return {item: 1.0 for item in scores}
    return {item: (s - low) / (high - low) for item, s in scores.items()}


def convex_fusion(
    fulltext: Mapping[Hashable, float],
    cosine: Mapping[Hashable, float],
    *,
    alpha: float = CONVEX_ALPHA,
) -> list[tuple[Hashable, float]]:
    """(item, α·cosine' + (1−α)·bm25') best first, both min-max normalised, over the items of
    `cosine`, which must hold every candidate of both lists; `fulltext` is the full-text
    list's raw scores (items missing from it count as its worst)."""
    lexical, semantic = min_max(fulltext), min_max(cosine)
    fused = {item: alpha * semantic[item] + (1 - alpha) * lexical.get(item, 0.0)
             for item in cosine}
    return sorted(fused.items(), key=lambda pair: -pair[1])
